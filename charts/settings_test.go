package charts

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/plexsphere/signer/internal/config"
)

// settingsOf lists the variables a binary's settings struct reads, the way
// internal/config does: an envconfig tag, or an embedded shared block
// (Identity) whose env tags follow its prefix tag.
func settingsOf(cfg any) []string {
	var out []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for i := range t.NumField() {
			f := t.Field(i)
			if f.Anonymous && f.Type.Kind() == reflect.Struct {
				walk(f.Type, f.Tag.Get("prefix"))
				continue
			}
			name := f.Tag.Get("envconfig")
			if prefix != "" {
				name = prefix + f.Tag.Get("env")
			}
			if name != "" {
				out = append(out, name)
			}
		}
	}
	walk(reflect.TypeOf(cfg), "")
	return out
}

// documented maps each SIGNER_* / SIDECAR_* name in README.md and docs/*.md
// to the files that mention it.
func documented(t *testing.T) map[string][]string {
	t.Helper()
	files, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, "../README.md")
	re := regexp.MustCompile(`\b(SIGNER|SIDECAR)_[A-Z0-9_]*[A-Z0-9]`)
	out := map[string][]string{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range re.FindAllString(string(raw), -1) {
			if !slices.Contains(out[name], f) {
				out[name] = append(out[name], f)
			}
		}
	}
	if len(out) < 40 {
		t.Fatalf("the docs mention %d settings: reading them went wrong", len(out))
	}
	return out
}

// retired are names the docs still mention for history only.
var retired = map[string]string{
	"SIDECAR_RELAY": "the relay mode, folded into the one forwarding path; docs/performance.md keeps its measured rows",
}

// notInAServingPod are the signer's settings that no serving pod may carry,
// each with the setting the chart uses instead ("" for maintenance runs
// that are Jobs of their own).
var notInAServingPod = map[string]string{
	"SIGNER_POSTGRES_DSN":            "SIGNER_POSTGRES_DSN_FILE",
	"SIGNER_LOCAL_KEK":               "SIGNER_LOCAL_KEK_FILE",
	"SIGNER_PKCS11_PIN":              "SIGNER_PKCS11_PIN_FILE",
	"SIGNER_POSTGRES_OWNER_DSN":      "SIGNER_POSTGRES_OWNER_DSN_FILE",
	"SIGNER_MIGRATE_ONLY":            "", // the migration Job passes --migrate-only
	"SIGNER_PRUNE_AUDIT_UPTO":        "", // a prune Job (docs/audit.md, Retention)
	"SIGNER_PRUNE_AUDIT_EXPORT":      "",
	"SIGNER_POSTGRES_PRUNE_DSN":      "",
	"SIGNER_POSTGRES_PRUNE_DSN_FILE": "",
}

// chartEnv is every variable the charts set in any configuration: the
// signer's containers (Deployment or StatefulSet, migration Job) and the
// injected sidecar.
func chartEnv(t *testing.T) (signer, sidecar map[string]bool) {
	t.Helper()
	full := withWitnesses(t, "all")
	for k, x := range map[string]any{
		"audit.checkpointFile": map[string]any{"enabled": true}, "audit.origin": "example.org/s", "audit.epoch": 2, "audit.epochReason": "restore",
		"audit.checkpointVerifierKey": "example.org/s+01234567+AUbV6HbVh3WbZcKuyjk4x6bYtoFNgE0EJUe9GcOxTsOc",
		"goMemLimit":                  "100MiB", "jwks": map[string]any{"enabled": true, "tlsSecret": map[string]any{"name": "tls"}},
	} {
		set(full, k, x)
	}
	pkcs11 := values(t, signerValues)
	pkcs11["provider"] = map[string]any{"type": "pkcs11", "pkcs11": map[string]any{"module": "/m.so", "tokenLabel": "t", "pinSecret": map[string]any{"name": "pin", "key": "pin"}}}
	pkcs11["identity"] = map[string]any{"mode": "files", "files": map[string]any{"secretName": "svid"}}
	bbolt := values(t, signerValues)
	bbolt["replicaCount"] = 1
	bbolt["store"] = map[string]any{"type": "bbolt"}

	signer = map[string]bool{}
	for _, v := range []map[string]any{full, pkcs11, bbolt} {
		m, err := render(t, "plexsphere-signer", v)
		if err != nil {
			t.Fatal(err)
		}
		_, c := signerPod(t, m)
		cs := []corev1.Container{c}
		for _, j := range m.jobs {
			cs = append(cs, j.Spec.Template.Spec.Containers...)
		}
		for _, c := range cs {
			for _, e := range c.Env {
				signer[e.Name] = true
			}
		}
	}
	sidecar = map[string]bool{}
	for _, mode := range []string{"spiffe-csi", "files"} {
		v := values(t, coreValues)
		set(v, "sidecar.identity.mode", mode)
		set(v, "sidecar.identity.files.secretName", "svid")
		m, err := render(t, "example-core", v)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range m.deployments[0].Spec.Template.Spec.InitContainers[0].Env {
			sidecar[e.Name] = true
		}
	}
	return signer, sidecar
}

// Every setting the docs mention or internal/config reads can be set from
// the chart: by a value of its own (the chart renders it, and extraEnv
// refuses it naming that value, so nothing in extraEnv silently fights the
// chart), or through extraEnv (rendered, last). The exceptions are the
// secrets' by-value forms (the chart mounts their files) and maintenance
// runs, which extraEnv refuses too. A new setting in internal/config, or a
// setting the docs start to mention, fails here until the chart reaches it.
func TestEveryDocumentedSettingIsReachable(t *testing.T) {
	docs := documented(t)
	signerSettings := append(settingsOf(config.Signer{}), "GOMEMLIMIT") // docs/kubernetes.md: goMemLimit
	sidecarSettings := settingsOf(config.Sidecar{})
	known := map[string]bool{}
	for _, n := range append(slices.Clone(signerSettings), sidecarSettings...) {
		known[n] = true
	}
	var stale []string
	for name, files := range docs {
		if !known[name] && retired[name] == "" {
			stale = append(stale, name+" ("+strings.Join(files, ", ")+")")
		}
	}
	sort.Strings(stale)
	if len(stale) > 0 {
		t.Errorf("the docs mention settings neither binary has: %v; fix the docs, or list a retired name in retired", stale)
	}
	for name := range retired {
		if known[name] {
			t.Errorf("%s is listed as retired but internal/config reads it", name)
		}
	}
	signerSet, sidecarSet := chartEnv(t)
	check := func(t *testing.T, chart, key string, v map[string]any, chartSet map[string]bool, name string) {
		set(v, key, []any{map[string]any{"name": name, "value": "1"}})
		m, err := render(t, chart, v)
		if err == nil {
			var c corev1.Container
			if chart == "plexsphere-signer" {
				_, c = signerPod(t, m)
			} else {
				c = m.deployments[0].Spec.Template.Spec.InitContainers[0]
			}
			last := c.Env[len(c.Env)-1]
			if last.Name != name || last.Value != "1" {
				t.Errorf("%s: %s accepted by %s but rendered %+v last", chart, name, key, last)
			}
			if chartSet[name] {
				t.Errorf("%s: %s accepted by %s although the chart sets it: it would fight the chart's value", chart, name, key)
			}
			return
		}
		want := key + "[0]: " + name + " is the chart's to set: use "
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %s in %s: %v, want %q", chart, name, key, err, want)
			return
		}
		if chartSet[name] {
			return
		}
		instead, ok := notInAServingPod[name]
		switch {
		case !ok:
			t.Errorf("%s: %s: extraEnv refuses it but no configuration of the chart sets it: give it a value or let extraEnv set it", chart, name)
		case instead != "" && !chartSet[instead]:
			t.Errorf("%s: %s: the chart should set %s instead, and sets neither", chart, name, instead)
		}
	}
	for _, name := range signerSettings {
		t.Run(name, func(t *testing.T) {
			check(t, "plexsphere-signer", "extraEnv", values(t, signerValues), signerSet, name)
		})
	}
	for _, name := range sidecarSettings {
		t.Run(name, func(t *testing.T) {
			check(t, "example-core", "sidecar.extraEnv", values(t, coreValues), sidecarSet, name)
		})
	}
	// The list above must not go stale either.
	for name := range notInAServingPod {
		if !slices.Contains(signerSettings, name) {
			t.Errorf("notInAServingPod lists %s, which the signer does not read", name)
		}
	}
}

// The sidecar's settings reach its container, each from its value.
func TestSidecarSettingValues(t *testing.T) {
	for _, tc := range []struct {
		set  map[string]any
		want string // NAME=value
	}{
		{nil, "SIDECAR_LOG_LEVEL=info"},
		{map[string]any{"sidecar.logLevel": "debug"}, "SIDECAR_LOG_LEVEL=debug"},
		{nil, "SIDECAR_MAX_MESSAGE_BYTES=327680"},
		{map[string]any{"sidecar.maxMessageBytes": 1048576}, "SIDECAR_MAX_MESSAGE_BYTES=1048576"},
		{nil, "SIDECAR_SHUTDOWN_TIMEOUT=10s"},
		{map[string]any{"sidecar.shutdownTimeout": "25s"}, "SIDECAR_SHUTDOWN_TIMEOUT=25s"},
		{nil, "SIDECAR_SOCKET_MODE=0660"},
		{map[string]any{"sidecar.extraEnv": []any{map[string]any{"name": "SIDECAR_IDENTITY_RELOAD", "value": "1s"}}}, "SIDECAR_IDENTITY_RELOAD=1s"},
		{map[string]any{"sidecar.extraEnv": []any{map[string]any{"name": "GOMAXPROCS", "valueFrom": map[string]any{"resourceFieldRef": map[string]any{"resource": "limits.cpu"}}}}}, "GOMAXPROCS=<from>"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			v := values(t, coreValues)
			for k, x := range tc.set {
				set(v, k, x)
			}
			m, err := render(t, "example-core", v)
			if err != nil {
				t.Fatal(err)
			}
			c := m.deployments[0].Spec.Template.Spec.InitContainers[0]
			name, value, _ := strings.Cut(tc.want, "=")
			n := 0
			for _, e := range c.Env {
				if e.Name == name {
					n++
				}
			}
			if got := envOf(c)[name]; got != value || n != 1 {
				t.Errorf("%s=%q (set %d times), want %q", name, got, n, value)
			}
			if value == "<from>" {
				last := c.Env[len(c.Env)-1]
				if last.ValueFrom == nil || last.ValueFrom.ResourceFieldRef == nil || last.ValueFrom.ResourceFieldRef.Resource != "limits.cpu" {
					t.Errorf("valueFrom rendered as %+v", last.ValueFrom)
				}
			}
		})
	}
}

func TestSidecarSettingRefusals(t *testing.T) {
	env := func(entries ...map[string]any) []any {
		out := make([]any, len(entries))
		for i, e := range entries {
			out[i] = e
		}
		return out
	}
	for _, tc := range []struct {
		name string
		set  map[string]any
		want string
	}{
		{"log level", map[string]any{"sidecar.logLevel": "verbose"}, `sidecar.logLevel "verbose": debug, info, warn or error`},
		{"shutdown timeout", map[string]any{"sidecar.shutdownTimeout": "10"}, `sidecar.shutdownTimeout "10" is no duration`},
		{"message size zero", map[string]any{"sidecar.maxMessageBytes": 0}, "sidecar.maxMessageBytes 0: a number of bytes, at least 1"},
		{"message size a word", map[string]any{"sidecar.maxMessageBytes": "1MiB"}, "sidecar.maxMessageBytes 1MiB: a number of bytes"},
		{"the signer's ID through extraEnv", map[string]any{"sidecar.extraEnv": env(map[string]any{"name": "SIDECAR_SIGNER_SPIFFE_ID", "value": "spiffe://example.org/evil"})},
			"sidecar.extraEnv[0]: SIDECAR_SIGNER_SPIFFE_ID is the chart's to set: use sidecar.signerSpiffeID instead (in extraEnv it would silently fight the chart's value)"},
		{"the socket's uids through extraEnv", map[string]any{"sidecar.extraEnv": env(map[string]any{"name": "SIDECAR_ALLOW_UIDS", "valueFrom": map[string]any{"configMapKeyRef": map[string]any{"name": "u", "key": "u"}}})},
			"sidecar.extraEnv[0]: SIDECAR_ALLOW_UIDS is the chart's to set: use sidecar.allowUIDs instead"},
		{"the socket's mode through extraEnv", map[string]any{"sidecar.extraEnv": env(map[string]any{"name": "SIDECAR_SOCKET_MODE", "value": "0666"})},
			"SIDECAR_SOCKET_MODE is the chart's to set"},
		{"a misspelt setting", map[string]any{"sidecar.extraEnv": env(map[string]any{"name": "SIDECAR_LOGLEVEL", "value": "debug"})},
			"sidecar.extraEnv[0]: SIDECAR_LOGLEVEL is no setting of the sidecar, which would refuse to start on it; extraEnv may set SIDECAR_IDENTITY_RELOAD"},
		{"twice", map[string]any{"sidecar.extraEnv": env(map[string]any{"name": "GODEBUG", "value": "a=1"}, map[string]any{"name": "GODEBUG", "value": "a=2"})},
			"sidecar.extraEnv[1]: GODEBUG is set twice"},
		{"value and valueFrom", map[string]any{"sidecar.extraEnv": env(map[string]any{"name": "X", "value": "1", "valueFrom": map[string]any{}})},
			"sidecar.extraEnv[0] (X): set value or valueFrom, one of them"},
		{"neither", map[string]any{"sidecar.extraEnv": env(map[string]any{"name": "X"})}, "sidecar.extraEnv[0] (X): set value or valueFrom, one of them"},
		{"unknown field", map[string]any{"sidecar.extraEnv": env(map[string]any{"name": "X", "value": "1", "secret": true})}, `sidecar.extraEnv[0] (X): unknown field "secret"`},
		{"bad name", map[string]any{"sidecar.extraEnv": env(map[string]any{"name": "1X", "value": "1"})}, `sidecar.extraEnv[0]: name "1X" is no variable name`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := values(t, coreValues)
			for k, x := range tc.set {
				set(v, k, x)
			}
			refused(t, "example-core", v, tc.want)
		})
	}
}

// The signer's extraEnv: valueFrom renders as given, and what extraEnv
// adds comes after the chart's own variables.
func TestSignerExtraEnv(t *testing.T) {
	v := values(t, signerValues)
	v["extraEnv"] = []any{
		map[string]any{"name": "SIGNER_CONNECTION_RATE", "value": "50"},
		map[string]any{"name": "GOMAXPROCS", "valueFrom": map[string]any{"resourceFieldRef": map[string]any{"resource": "limits.cpu", "divisor": "1"}}},
	}
	m, err := render(t, "plexsphere-signer", v)
	if err != nil {
		t.Fatal(err)
	}
	_, c := signerPod(t, m)
	n := len(c.Env)
	if e := c.Env[n-2]; e.Name != "SIGNER_CONNECTION_RATE" || e.Value != "50" || e.ValueFrom != nil {
		t.Errorf("next to last %+v", e)
	}
	if e := c.Env[n-1]; e.Name != "GOMAXPROCS" || e.Value != "" || e.ValueFrom == nil || e.ValueFrom.ResourceFieldRef == nil || e.ValueFrom.ResourceFieldRef.Resource != "limits.cpu" {
		t.Errorf("last %+v", e)
	}
}
