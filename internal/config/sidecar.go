package config

import (
	"errors"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/plexsphere/signer/internal/localaddr"
)

// Sidecar is plexsphere-sidecar's configuration.
type Sidecar struct {
	Listen     []string `envconfig:"SIDECAR_LISTEN" flag:"listen" default:"unix:///run/plexsphere/signer.sock" desc:"where the core connects: unix:///path, localhost:port or a loopback IP:port"`
	SocketMode string   `envconfig:"SIDECAR_SOCKET_MODE" flag:"socket-mode" default:"0660" desc:"permissions of the Unix socket (octal)"`
	AllowUIDs  []int    `envconfig:"SIDECAR_ALLOW_UIDS" flag:"allow-uid" desc:"uid allowed to connect over the Unix socket (checked with SO_PEERCRED); empty admits any"`
	OpsListen  string   `envconfig:"SIDECAR_OPS_LISTEN" flag:"ops-listen" desc:"plain HTTP address for /metrics and gRPC health (empty disables)"`

	Upstream       string `envconfig:"SIDECAR_UPSTREAM" flag:"upstream" desc:"the signer: dns:///host:port (one connection per address, looked up every 5s), host:port, or host:port,host:port,...; calls go to the least loaded replica"`
	SignerSPIFFEID string `envconfig:"SIDECAR_SIGNER_SPIFFE_ID" flag:"signer-spiffe-id" desc:"the SPIFFE ID the signer must present"`

	Identity `ignored:"true" prefix:"SIDECAR_"`

	MaxConnections       int `envconfig:"SIDECAR_MAX_CONNECTIONS" flag:"max-connections" default:"128" desc:"most connections the core may hold open; one more is closed"`
	MaxConcurrentStreams int `envconfig:"SIDECAR_MAX_CONCURRENT_STREAMS" flag:"max-concurrent-streams" default:"1024" desc:"most calls in flight on one connection (HTTP/2 stream limit)"`

	MaxMessageBytes int           `envconfig:"SIDECAR_MAX_MESSAGE_BYTES" flag:"max-message-bytes" default:"327680" desc:"largest message relayed either way"`
	ShutdownTimeout time.Duration `envconfig:"SIDECAR_SHUTDOWN_TIMEOUT" flag:"shutdown-timeout" default:"10s" desc:"how long shutdown waits for in-flight calls"`
	LogLevel        string        `envconfig:"SIDECAR_LOG_LEVEL" flag:"log-level" default:"info" desc:"debug, info, warn or error"`

	addrs []localaddr.Addr // Listen, parsed by Validate
}

// ListenAddrs are the Listen addresses as Validate parsed them (nil before
// a successful Validate).
func (c *Sidecar) ListenAddrs() []localaddr.Addr { return c.addrs }

// Validate checks every setting; errors name the flag and the variable.
func (c *Sidecar) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(c.Listen) == 0 {
		add(Errorf(c, "Listen", "required"))
	}
	// Parsed here, once: the sidecar takes the parsed addresses.
	c.addrs = nil
	for _, l := range c.Listen {
		a, err := localaddr.Parse(l)
		if err != nil {
			add(Errorf(c, "Listen", "%v", err))
			continue
		}
		c.addrs = append(c.addrs, a)
	}
	if _, err := c.Mode(); err != nil {
		add(Errorf(c, "SocketMode", "%q is not an octal mode such as 0660", c.SocketMode))
	}
	if err := localaddr.CheckUIDs(c.addrs, len(c.AllowUIDs)); err != nil {
		add(Errorf(c, "AllowUIDs", "%v: remove the loopback TCP address from %s", err, Name(c, "Listen")))
	}
	for _, uid := range c.AllowUIDs {
		if uid < 0 {
			add(Errorf(c, "AllowUIDs", "%d is not a uid", uid))
		}
	}
	if c.OpsListen != "" {
		add(checkAddr(c, "OpsListen", c.OpsListen))
	}
	if c.Upstream == "" {
		add(Errorf(c, "Upstream", "required: the signer's address"))
	}
	if c.SignerSPIFFEID == "" {
		add(Errorf(c, "SignerSPIFFEID", "required: the sidecar must know which identity the signer presents"))
	} else if _, err := spiffeid.FromString(c.SignerSPIFFEID); err != nil {
		add(Errorf(c, "SignerSPIFFEID", "%q is not a SPIFFE ID: %v", c.SignerSPIFFEID, err))
	}
	add(c.Identity.check(c))
	if c.MaxMessageBytes < 1024 || c.MaxMessageBytes > 16<<20 {
		add(Errorf(c, "MaxMessageBytes", "%d is outside 1024..%d", c.MaxMessageBytes, 16<<20))
	}
	if c.MaxConnections < 1 || c.MaxConnections > 1<<16 {
		add(Errorf(c, "MaxConnections", "%d is outside 1..%d", c.MaxConnections, 1<<16))
	}
	if c.MaxConcurrentStreams < 1 || c.MaxConcurrentStreams > 1<<20 {
		add(Errorf(c, "MaxConcurrentStreams", "%d is outside 1..%d", c.MaxConcurrentStreams, 1<<20))
	}
	if c.ShutdownTimeout <= 0 {
		add(Errorf(c, "ShutdownTimeout", "must be positive"))
	}
	if _, err := ParseLevel(c.LogLevel); err != nil {
		add(Errorf(c, "LogLevel", "%v", err))
	}
	if len(errs) > 0 {
		c.addrs = nil
	}
	return errors.Join(errs...)
}

// Mode parses SocketMode.
func (c *Sidecar) Mode() (uint32, error) {
	m, err := strconv.ParseUint(c.SocketMode, 8, 32)
	if err != nil || m > 0o777 {
		return 0, errors.New("bad mode")
	}
	return uint32(m), nil
}
