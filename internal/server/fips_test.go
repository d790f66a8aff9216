package server_test

import (
	"testing"

	"github.com/plexsphere/signer/internal/testing/testenv"
)

// make test-fips runs the admission contract (TestAdmission) in a FIPS
// 140-3 build; this test fails that run if it is not one.
func TestFIPSMode(t *testing.T) { testenv.CheckFIPS(t) }
