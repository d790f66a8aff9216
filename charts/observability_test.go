package charts

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/plexsphere/signer/client"
	"github.com/plexsphere/signer/internal/metrics"
	"github.com/plexsphere/signer/internal/ops"
	"github.com/plexsphere/signer/internal/testing/signertest"
	signerv1 "github.com/plexsphere/signer/proto/plexsphere/signer/v1"
	"github.com/plexsphere/signer/sidecar"
)

// prometheusRule is the part of prometheus-operator's PrometheusRule the
// chart renders; decoded strictly, so a misspelt field fails.
type prometheusRule struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for,omitempty"`
				Labels      map[string]string `json:"labels,omitempty"`
				Annotations map[string]string `json:"annotations,omitempty"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

// serviceMonitor is the part of prometheus-operator's ServiceMonitor the
// chart renders, decoded strictly.
type serviceMonitor struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval"`
		} `json:"endpoints"`
	} `json:"spec"`
}

const jwksValues = `
jwks:
  enabled: true
  tlsSecret: {name: signer-jwks-tls}
  issuerURL: https://keys.example.com
`

const monitoringValues = `
monitoring:
  dashboard: {enabled: true}
  prometheusRule:
    enabled: true
    labels: {release: kube-prometheus-stack}
    additionalLabels: {team: payments}
`

// Off by default: no JWKS port, Service, variable or ingress rule; no
// dashboard, no PrometheusRule.
func TestSignerChartObservabilityOffByDefault(t *testing.T) {
	m, err := render(t, "plexsphere-signer", values(t, signerValues))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.configMaps) != 0 || len(m.rules) != 0 || len(m.serviceMonitors) != 0 {
		t.Errorf("%d ConfigMaps, %d PrometheusRules, %d ServiceMonitors rendered by default", len(m.configMaps), len(m.rules), len(m.serviceMonitors))
	}
	for _, s := range m.services {
		if strings.HasSuffix(s.Name, "-jwks") {
			t.Errorf("Service %s rendered by default", s.Name)
		}
	}
	c := m.deployments[0].Spec.Template.Spec.Containers[0]
	for name := range envOf(c) {
		if strings.HasPrefix(name, "SIGNER_JWKS_") {
			t.Errorf("%s set by default", name)
		}
	}
	for _, p := range c.Ports {
		if p.Name == "jwks" {
			t.Error("jwks port declared by default")
		}
	}
	for _, in := range policyNamed(t, m, "signer").Spec.Ingress {
		for _, p := range in.Ports {
			if p.Port.String() == "jwks" {
				t.Error("NetworkPolicy admits the jwks port by default")
			}
		}
	}
}

// On: the pod listens with the TLS Secret mounted, a Service exposes 443,
// and the NetworkPolicy admits the port from anywhere or from allowFrom
// only. Without a TLS Secret the chart refuses to render.
func TestSignerChartJWKS(t *testing.T) {
	m, err := render(t, "plexsphere-signer", values(t, signerValues+jwksValues))
	if err != nil {
		t.Fatal(err)
	}
	pod := m.deployments[0].Spec.Template.Spec
	c := pod.Containers[0]
	env := envOf(c)
	if env["SIGNER_JWKS_LISTEN"] != ":8444" || env["SIGNER_JWKS_CERT_FILE"] != "/var/run/secrets/plexsphere/jwks/tls.crt" ||
		env["SIGNER_JWKS_KEY_FILE"] != "/var/run/secrets/plexsphere/jwks/tls.key" || env["SIGNER_JWKS_ISSUER_URL"] != "https://keys.example.com" ||
		env["SIGNER_JWKS_RATE"] != "20" {
		t.Errorf("env %v", env)
	}
	var port, mount, volume bool
	for _, p := range c.Ports {
		port = port || (p.Name == "jwks" && p.ContainerPort == 8444)
	}
	for _, vm := range c.VolumeMounts {
		mount = mount || (vm.Name == "jwks-tls" && vm.MountPath == "/var/run/secrets/plexsphere/jwks" && vm.ReadOnly)
	}
	for _, v := range pod.Volumes {
		volume = volume || (v.Name == "jwks-tls" && v.Secret != nil && v.Secret.SecretName == "signer-jwks-tls")
	}
	if !port || !mount || !volume {
		t.Errorf("port %v, mount %v, volume %v", port, mount, volume)
	}
	var svc bool
	for _, s := range m.services {
		if s.Name == "signer-jwks" {
			svc = len(s.Spec.Ports) == 1 && s.Spec.Ports[0].Port == 443 && s.Spec.Ports[0].TargetPort.String() == "jwks" && s.Spec.Type == "ClusterIP"
		}
	}
	if !svc {
		t.Errorf("no Service signer-jwks on 443 → jwks: %+v", m.services)
	}
	rule := func(m manifests) (found bool, from int) {
		for _, in := range policyNamed(t, m, "signer").Spec.Ingress {
			if len(in.Ports) == 1 && in.Ports[0].Port.String() == "jwks" {
				return true, len(in.From)
			}
		}
		return false, 0
	}
	if found, from := rule(m); !found || from != 0 {
		t.Errorf("jwks ingress rule: found %v with %d peers, want one open to all", found, from)
	}
	m, err = render(t, "plexsphere-signer", values(t, signerValues+jwksValues+`
  allowFrom:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: gateway}}
    - ipBlock: {cidr: 203.0.113.0/24}
`))
	if err != nil {
		t.Fatal(err)
	}
	if found, from := rule(m); !found || from != 2 {
		t.Errorf("jwks ingress rule with allowFrom: found %v with %d peers, want 2", found, from)
	}
	if _, err := render(t, "plexsphere-signer", values(t, signerValues+"jwks: {enabled: true}\n")); err == nil || !strings.Contains(err.Error(), "jwks.tlsSecret.name") {
		t.Errorf("jwks without a TLS Secret: %v", err)
	}
	if _, err := render(t, "plexsphere-signer", values(t, signerValues+jwksValues+"  issuerURL: http://keys.example.com\n")); err == nil {
		t.Error("a plain-http issuer URL passed the schema")
	}
}

// The ServiceMonitor scrapes the ops Service and nothing else: its
// selector matches only the Service that has the ops port.
func TestSignerChartServiceMonitor(t *testing.T) {
	m, err := render(t, "plexsphere-signer", values(t, signerValues+jwksValues+`
monitoring:
  serviceMonitor: {enabled: true, labels: {release: kube-prometheus-stack}, interval: 15s}
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.serviceMonitors) != 1 {
		t.Fatalf("%d ServiceMonitors", len(m.serviceMonitors))
	}
	sm := m.serviceMonitors[0]
	if sm.APIVersion != "monitoring.coreos.com/v1" || sm.Metadata.Labels["release"] != "kube-prometheus-stack" ||
		len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "ops" || sm.Spec.Endpoints[0].Path != "/metrics" || sm.Spec.Endpoints[0].Interval != "15s" {
		t.Fatalf("ServiceMonitor %+v", sm)
	}
	sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	var matched []string
	for _, s := range m.services {
		if sel.Matches(labels.Set(s.Labels)) {
			matched = append(matched, s.Name)
		}
	}
	if len(matched) != 1 || matched[0] != "signer-ops" {
		t.Fatalf("the ServiceMonitor selects %v, want only signer-ops", matched)
	}
}

// promqlFunctions are the functions the dashboard and the alerts may call;
// anything else followed by "(" is a mistake.
var promqlFunctions = map[string]bool{"sum": true, "min": true, "max": true, "avg": true, "count": true, "rate": true,
	"increase": true, "irate": true, "time": true, "histogram_quantile": true, "clamp_min": true, "absent": true}

var promqlKeywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true}

var (
	reQuoted      = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	reMatchers    = regexp.MustCompile(`\{[^}]*\}`)
	reRange       = regexp.MustCompile(`\[[^\]]*\]`)
	reGrouping    = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	reLabelValues = regexp.MustCompile(`label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)[^)]*\)`)
	reVariable    = regexp.MustCompile(`\$\{?\w+\}?`)
	reIdent       = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?`)
)

// metricNames returns the metric names a PromQL expression (or a Grafana
// label_values query) reads: strings, label matchers, ranges, groupings and
// Grafana variables are removed; of the identifiers left, those followed by
// "(" must be known functions, keywords are skipped, the rest are metrics.
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	e := reLabelValues.ReplaceAllString(expr, "$1")
	for _, re := range []*regexp.Regexp{reQuoted, reMatchers, reRange, reGrouping, reVariable} {
		e = re.ReplaceAllString(e, " ")
	}
	var out []string
	for _, m := range reIdent.FindAllStringSubmatch(e, -1) {
		name := strings.TrimRight(strings.TrimSuffix(strings.TrimSpace(m[0]), "("), " ")
		switch {
		case m[1] != "":
			if !promqlFunctions[name] {
				t.Errorf("expression %q calls %s(), not a function this test knows", expr, name)
			}
		case promqlKeywords[name]:
		default:
			out = append(out, name)
		}
	}
	return out
}

func TestMetricNamesParser(t *testing.T) {
	for expr, want := range map[string]string{
		`histogram_quantile(0.99, sum by (le, method) (rate(a_bucket{job=~"$job"}[$__rate_interval])))`: "a_bucket",
		`increase(b_total[5m]) > 0 or c{dependency="store", x="y}"} == 0`:                               "b_total c",
		`time() - d{state="ACTIVE"} > 840 * 3600`:                                                       "d",
		`label_values(e, job)`: "e",
		`sum(f) / count(g)`:    "f g",
	} {
		if got := strings.Join(metricNames(t, expr), " "); got != want {
			t.Errorf("metricNames(%q) = %q, want %q", expr, got, want)
		}
	}
}

// Every metric the dashboard and the alerts read exists, by name, in the
// live /metrics of a real signer (with its JWKS endpoint) and a real
// sidecar after a little traffic; every alert has a runbook entry in
// docs/operations.md; the dashboard ConfigMap carries Grafana's discovery
// label.
func TestMonitoringUsesOnlyLiveMetrics(t *testing.T) {
	m, err := render(t, "plexsphere-signer", values(t, signerValues+monitoringValues))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.configMaps) != 1 || len(m.rules) != 1 {
		t.Fatalf("%d ConfigMaps, %d PrometheusRules", len(m.configMaps), len(m.rules))
	}
	cm, pr := m.configMaps[0], m.rules[0]
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard labels %v lack grafana_dashboard: \"1\"", cm.Labels)
	}
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Metadata.Labels["release"] != "kube-prometheus-stack" {
		t.Errorf("PrometheusRule %s, labels %v", pr.APIVersion, pr.Metadata.Labels)
	}

	used := map[string][]string{} // metric → where
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal([]byte(cm.Data["plexsphere-signer.json"]), &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	exprs := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs++
			for _, n := range metricNames(t, tg.Expr) {
				used[n] = append(used[n], "panel "+p.Title)
			}
		}
	}
	for _, v := range dash.Templating.List {
		var q struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) == nil && q.Query != "" {
			for _, n := range metricNames(t, q.Query) {
				used[n] = append(used[n], "variable "+v.Name)
			}
		}
	}
	ops, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	var alerts []string
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			names := metricNames(t, r.Expr)
			if len(names) == 0 {
				t.Errorf("alert %s reads no metric: %q", r.Alert, r.Expr)
			}
			for _, n := range names {
				used[n] = append(used[n], "alert "+r.Alert)
			}
			anchor := "alert-" + strings.ToLower(r.Alert)
			if !strings.HasSuffix(r.Annotations["runbook_url"], "#"+anchor) || r.Labels["severity"] == "" || r.Labels["team"] != "payments" || r.Annotations["summary"] == "" {
				t.Errorf("alert %s: labels %v, annotations %v", r.Alert, r.Labels, r.Annotations)
			}
			if !strings.Contains(string(ops), "\n#### Alert: "+r.Alert+"\n") {
				t.Errorf("docs/operations.md has no runbook heading \"#### Alert: %s\"", r.Alert)
			}
		}
	}
	for _, want := range []string{"AuditUnavailable", "ProviderUnavailable", "AuditLogBroken", "AuditLogUnanchored", "AuditAnchorStale", "WitnessFailing",
		"RotationOverdue", "DenialsSpiking", "SVIDNearExpiry"} {
		if !slices.ContainsFunc(alerts, func(a string) bool { return strings.HasSuffix(a, want) }) {
			t.Errorf("no alert for %s among %v", want, alerts)
		}
	}
	if exprs < 10 || len(used) < 15 {
		t.Fatalf("the dashboard has %d queries over %d metrics: parsing went wrong", exprs, len(used))
	}

	live := liveMetrics(t)
	var names []string
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if !live[n] {
			t.Errorf("%s (used by %s) is not in the live /metrics", n, strings.Join(used[n], ", "))
		}
	}
	if !t.Failed() {
		t.Logf("%d metrics used by %d dashboard queries and %d alerts, all present in the live /metrics", len(names), exprs, len(alerts))
	}
}

// liveMetrics starts a signer (ops listener, JWKS endpoint, a witness) and a
// sidecar wired as cmd/plexsphere-sidecar wires it, makes a granted Sign
// through the sidecar, a denied call and a JWKS fetch, and returns every
// sample name both ops listeners serve over HTTP.
func liveMetrics(t *testing.T) map[string]bool {
	t.Helper()
	// A witness: its requests are counted from the first push on (at
	// start-up), so the witness alert's metric is live.
	env := signertest.Start(t, signertest.WithOps(), signertest.WithJWKS(), signertest.WithWitnesses("w1"))
	forwarded := []string{signerv1.SignerService_Sign_FullMethodName, signerv1.SignerService_PublicKey_FullMethodName}
	var proxy *sidecar.Proxy
	sm := metrics.NewSidecar(forwarded, func() bool { return proxy != nil && proxy.Ready(context.Background()) == nil }, env.Source(env.Issue(t, signertest.CoreID)))
	sc := signertest.StartSidecar(t, env.Addr, env.Source(env.Issue(t, signertest.CoreID)), func(c *sidecar.Config) { c.Observe = sm.ObserveCall })
	proxy = sc.Proxy
	sideOps, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := ops.Server(sc.Proxy.Health(), sc.Proxy.Ready, sm.Handler())
	go srv.Serve(sideOps)
	t.Cleanup(func() { srv.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, sc.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := cl.Sign(ctx, signertest.Scope, []byte("dashboard")); err != nil {
		t.Fatal(err)
	}
	// A caller without a certificate: denied at admission.
	if _, err := signerv1.NewSignerServiceClient(env.Dial(t, nil)).Sign(ctx, &signerv1.SignRequest{Scope: signertest.Scope}); err == nil {
		t.Fatal("a caller without a certificate was admitted")
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsTrusting(env)}}
	resp, err := hc.Get(env.JWKSURL + "/scopes/" + signertest.Scope + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	live := map[string]bool{}
	for _, addr := range []string{env.OpsAddr, sideOps.Addr().String()} {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		sc := bufio.NewScanner(strings.NewReader(string(body)))
		for sc.Scan() {
			line := sc.Text()
			if line == "" || line[0] == '#' {
				continue
			}
			if i := strings.IndexAny(line, "{ "); i > 0 {
				live[line[:i]] = true
			}
		}
	}
	return live
}

func tlsTrusting(env *signertest.Env) *tls.Config {
	return &tls.Config{RootCAs: env.JWKSRoots, MinVersion: tls.VersionTLS12}
}
