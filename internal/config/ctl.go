package config

import (
	"errors"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Ctl is signerctl's configuration: where the signer is and which operator
// identity to present.
type Ctl struct {
	Signer         string `envconfig:"SIGNERCTL_SIGNER" flag:"signer" default:"127.0.0.1:8443" desc:"the signer's gRPC address (host:port or a gRPC target)"`
	SignerSPIFFEID string `envconfig:"SIGNERCTL_SIGNER_SPIFFE_ID" flag:"signer-spiffe-id" desc:"the SPIFFE ID the signer must present (required), e.g. spiffe://<trust domain>/ns/<namespace>/sa/<signer release>"`

	Identity `ignored:"true" prefix:"SIGNERCTL_"`

	CheckpointKey     string `envconfig:"SIGNERCTL_CHECKPOINT_KEY" flag:"checkpoint-key" desc:"the audit log's checkpoint verifier key (<origin>+<hash>+<key>: signerctl audit checkpoint-key once, the signer's start-up log, or bin/run/signerctl.env with make run); pin it: audit commands then trust nothing the signer says about its own key"`
	WitnessPolicyFile string `envconfig:"SIGNERCTL_WITNESS_POLICY_FILE" flag:"witness-policy" desc:"the audit log's witness policy (the signer's SIGNER_WITNESS_POLICY_FILE, witness/group/quorum lines): audit checkpoint and verify then require the newest witnessed checkpoint to carry the quorum's cosignatures, and prove, consistency and export check cosignatures with it"`

	Output  string        `envconfig:"SIGNERCTL_OUTPUT" flag:"output" default:"table" desc:"table or json"`
	Timeout time.Duration `envconfig:"SIGNERCTL_TIMEOUT" flag:"timeout" default:"10s" desc:"deadline of each call"`
}

// Validate checks the settings.
func (c *Ctl) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if c.Signer == "" {
		add(Errorf(c, "Signer", "required"))
	}
	// No default: a guessed ID would only fail later, at the handshake.
	if c.SignerSPIFFEID == "" {
		add(Errorf(c, "SignerSPIFFEID", "required: the SPIFFE ID the signer presents, e.g. spiffe://<trust domain>/ns/<namespace>/sa/<signer release> for the chart's signer"))
	} else if _, err := spiffeid.FromString(c.SignerSPIFFEID); err != nil {
		add(Errorf(c, "SignerSPIFFEID", "%q is not a SPIFFE ID: %v", c.SignerSPIFFEID, err))
	}
	add(c.Identity.check(c))
	if c.Output != "table" && c.Output != "json" {
		add(Errorf(c, "Output", "%q: use table or json", c.Output))
	}
	if c.Timeout <= 0 {
		add(Errorf(c, "Timeout", "must be positive"))
	}
	return errors.Join(errs...)
}
