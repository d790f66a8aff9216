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

	SVIDCertFile    string `envconfig:"SIGNERCTL_SVID_CERT_FILE" flag:"svid-cert" desc:"PEM X.509-SVID certificate chain file (the operator identity)"`
	SVIDKeyFile     string `envconfig:"SIGNERCTL_SVID_KEY_FILE" flag:"svid-key" desc:"PEM X.509-SVID private key file"`
	TrustBundleFile string `envconfig:"SIGNERCTL_TRUST_BUNDLE_FILE" flag:"trust-bundle" desc:"PEM SPIFFE trust bundle file"`
	WorkloadAPIAddr string `envconfig:"SIGNERCTL_WORKLOAD_API_ADDR" flag:"workload-api-addr" desc:"SPIFFE Workload API address (unix:///path); instead of the SVID files"`

	CheckpointKey string `envconfig:"SIGNERCTL_CHECKPOINT_KEY" flag:"checkpoint-key" desc:"the audit log's checkpoint verifier key (<origin>+<hash>+<key>, from the signer's start-up log or chart values); pin it: audit commands then trust nothing the signer says about its own key"`

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
	add(checkIdentity(c, c.WorkloadAPIAddr, c.SVIDCertFile, c.SVIDKeyFile, c.TrustBundleFile, 0))
	if c.Output != "table" && c.Output != "json" {
		add(Errorf(c, "Output", "%q: use table or json", c.Output))
	}
	if c.Timeout <= 0 {
		add(Errorf(c, "Timeout", "must be positive"))
	}
	return errors.Join(errs...)
}
