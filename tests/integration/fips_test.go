package integration

import (
	"testing"

	"github.com/plexsphere/signer/internal/testing/testenv"
)

// make test-fips runs the contract tests of this package in a FIPS 140-3
// build; this test fails that run if it is not one (see testenv.CheckFIPS).
func TestFIPSMode(t *testing.T) { testenv.CheckFIPS(t) }
