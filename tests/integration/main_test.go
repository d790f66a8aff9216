package integration

import (
	"os"
	"testing"

	"github.com/plexsphere/signer/internal/testing/pgtest"
)

// One Postgres container serves the package; each test clones a database.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
