package config

import "time"

// Identity is the workload identity every binary presents, declared once.
// Each binary's settings embed it with the prefix of their variables,
//
//	Identity `ignored:"true" prefix:"SIGNER_"`
//
// which makes SIGNER_SVID_CERT_FILE, SIDECAR_SVID_CERT_FILE and so on.
// envconfig skips it (ignored); Bind reads its variables with the prefix
// and never falls back to an unprefixed SVID_CERT_FILE.
type Identity struct {
	SVIDCertFile    string        `env:"SVID_CERT_FILE" flag:"svid-cert" desc:"PEM X.509-SVID certificate chain file"`
	SVIDKeyFile     string        `env:"SVID_KEY_FILE" flag:"svid-key" desc:"PEM X.509-SVID private key file"`
	TrustBundleFile string        `env:"TRUST_BUNDLE_FILE" flag:"trust-bundle" desc:"PEM SPIFFE trust bundle file"`
	IdentityReload  time.Duration `env:"IDENTITY_RELOAD" flag:"identity-reload" default:"5s" desc:"how often the SVID files are checked for changes"`
	WorkloadAPIAddr string        `env:"WORKLOAD_API_ADDR" flag:"workload-api-addr" desc:"SPIFFE Workload API address (unix:///path); instead of the SVID files"`
}

// check accepts either the Workload API or all three SVID files; cfg is the
// binary's settings that embed i, so errors carry its names.
func (i Identity) check(cfg any) error {
	files := i.SVIDCertFile != "" || i.SVIDKeyFile != "" || i.TrustBundleFile != ""
	switch {
	case i.WorkloadAPIAddr != "" && files:
		return Errorf(cfg, "WorkloadAPIAddr", "set either the Workload API address or the SVID files, not both")
	case i.WorkloadAPIAddr == "" && !files:
		return Errorf(cfg, "SVIDCertFile", "no identity: set the SVID files (%s, %s, %s) or %s",
			Name(cfg, "SVIDCertFile"), Name(cfg, "SVIDKeyFile"), Name(cfg, "TrustBundleFile"), Name(cfg, "WorkloadAPIAddr"))
	case files && i.SVIDCertFile == "":
		return Errorf(cfg, "SVIDCertFile", "required with the other SVID files")
	case files && i.SVIDKeyFile == "":
		return Errorf(cfg, "SVIDKeyFile", "required with the other SVID files")
	case files && i.TrustBundleFile == "":
		return Errorf(cfg, "TrustBundleFile", "required with the other SVID files")
	case i.IdentityReload < 0:
		return Errorf(cfg, "IdentityReload", "must not be negative")
	}
	return nil
}

// Settings names the settings an identity error is about: the
// Workload API address if one is set, else the three SVID files. cfg is the
// binary's settings that embed i.
func (i Identity) Settings(cfg any) string {
	if i.WorkloadAPIAddr != "" {
		return Name(cfg, "WorkloadAPIAddr")
	}
	return Name(cfg, "SVIDCertFile") + ", " + Name(cfg, "SVIDKeyFile") + ", " + Name(cfg, "TrustBundleFile")
}

// Error wraps err, a failure to open the identity, as a SettingError
// naming the settings it came from.
func (i Identity) Error(cfg any, err error) error {
	return &SettingError{Setting: i.Settings(cfg), Problem: err.Error(), Err: err}
}
