package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	consul "github.com/hashicorp/consul/api"

	"github.com/llorch/llorch/driver/nomadclient"
	"github.com/llorch/llorch/internal/consultest"
	"github.com/llorch/llorch/internal/nomadpb/base"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
	"github.com/llorch/llorch/internal/testenv"
)

// enginePort is where the tiny model listens on each host; other pools take
// the next ports.
const enginePort = 8081

// cluster is the running multi-host setup.
type cluster struct {
	t      *testing.T
	f      *fabric
	dir    string
	bin    string // llorch
	llama  string
	model  string
	consul string // consul binary

	mgmt                         string // Consul management token
	apiToken, engineToken        string
	driverToken, routerToken     string
	apiTokFile, engineTokFile    string
	keySecret, keysFile          string // a per-team API key the run uses (the leak scan looks for it)
	driverTokFile, routerTokFile string
	agentTokens                  map[string]string // client host → its Consul agent token

	mu      sync.Mutex
	agents  map[string]*exec.Cmd
	plugins map[string]*nomadclient.Plugin
	router  *exec.Cmd
	logs    []string // every log file of the run, for the leak scan
	scanned int
	http    *http.Client
	tls     *clusterTLS // the TLS variant: every hop over TLS; nil: plain HTTP
}

type task struct {
	host, id, allocID, dir, marker string
	handle                         *drivers.TaskHandle
}

// newCluster prepares a run on f's hosts; withTLS issues the TLS
// variant's certificates and makes every client of the run verify them.
func newCluster(t *testing.T, f *fabric, withTLS bool) *cluster {
	c := &cluster{t: t, f: f, dir: keptDir(t, f), agents: map[string]*exec.Cmd{}, plugins: map[string]*nomadclient.Plugin{}}
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	if withTLS {
		c.tls = newClusterTLS(c)
		tr.TLSClientConfig = c.tls.clientConfig(nil)
	}
	c.http = &http.Client{Timeout: 15 * time.Second, Transport: tr}
	c.bin = nomadclient.Binary(t)
	c.llama = testenv.LlamaServer(t)
	c.consul = testenv.ConsulBinary(t)
	c.mgmt = uuid.NewString()
	c.apiToken = "api-" + strings.ReplaceAll(uuid.NewString(), "-", "")
	c.engineToken = "eng-" + strings.ReplaceAll(uuid.NewString(), "-", "")
	c.apiTokFile = c.secret("api.token", c.apiToken)
	c.engineTokFile = c.secret("engine.token", c.engineToken)
	c.writeKeys()
	return c
}

// keptDir is the run's directory (configs, data, logs). It is removed after
// a passing run; a failing run (or LLORCH_E2E_KEEP=1) keeps it so the logs
// of every process can be read afterwards.
func keptDir(t *testing.T, f *fabric) string {
	dir, err := os.MkdirTemp("", "llorch-e2e-"+f.prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.destroy() // no process may still write into dir
		if t.Failed() || os.Getenv("LLORCH_E2E_KEEP") != "" {
			t.Logf("run directory kept: %s (logs under logs/ and alloc-*/alloc/logs/)", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	return dir
}

func (c *cluster) secret(name, v string) string {
	p := filepath.Join(c.dir, name)
	if err := os.WriteFile(p, []byte(v+"\n"), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return p
}

func (c *cluster) logFile(name string) *os.File {
	p := filepath.Join(c.dir, "logs", name)
	os.MkdirAll(filepath.Dir(p), 0o755)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.logs = append(c.logs, p)
	c.mu.Unlock()
	return f
}

func (c *cluster) spawn(host, name string, env []string, bin string, args ...string) *exec.Cmd {
	cmd := c.f.in(host, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	lf := c.logFile(name + ".log")
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start %s on %s: %v", name, host, err)
	}
	go func() { _ = cmd.Wait(); lf.Close() }()
	return cmd
}

// routerURL is where clients reach the router (https:// in the TLS variant).
func (c *cluster) routerURL() string {
	if c.tls != nil {
		return "https://" + subnet + "1:8080"
	}
	return "http://" + subnet + "1:8080"
}

// consulPort is the agents' API port: HTTPS-only 8501 in the TLS variant.
func (c *cluster) consulPort() string {
	if c.tls != nil {
		return strconv.Itoa(consulHTTPSPort)
	}
	return "8500"
}

// startConsul starts the server (ctl) or a client agent joined to it, ACLs
// on, fast LAN gossip so a lost node is noticed in seconds.
func (c *cluster) startConsul(host string, server bool) {
	ip := c.f.hosts[host]
	dataDir := filepath.Join(c.dir, "consul-"+host)
	os.MkdirAll(dataDir, 0o700)
	// The server holds the management token (initial_management) and uses
	// it as its agent token; a client agent gets only a token that may
	// write its own node, as a production agent would.
	role := fmt.Sprintf("retry_join = [%q]", subnet+"1")
	tokens := fmt.Sprintf("agent = %q", c.agentTokens[host])
	if server {
		role = "server = true\nbootstrap_expect = 1"
		tokens = fmt.Sprintf("initial_management = %q, agent = %q", c.mgmt, c.mgmt)
	}
	ports := "ports { dns = -1, grpc = -1, grpc_tls = -1 }\n"
	if c.tls != nil {
		ports = c.tls.consulHCL(host)
	}
	cfg := fmt.Sprintf(`datacenter = "dc1"
node_name = %q
data_dir = %q
bind_addr = %q
client_addr = "127.0.0.1 %s"
%s
%sacl {
  enabled = true
  default_policy = "deny"
  enable_token_persistence = true
  tokens { %s }
}
gossip_lan {
  probe_interval = "200ms"
  probe_timeout = "100ms"
  suspicion_mult = 2
}
log_level = "info"
`, host, dataDir, ip, ip, role, ports, tokens)
	cf := filepath.Join(c.dir, "consul-"+host+".hcl")
	if err := os.WriteFile(cf, []byte(cfg), 0o600); err != nil {
		c.t.Fatal(err)
	}
	cmd := c.spawn(host, "consul-"+host, nil, c.consul, "agent", "-config-file="+cf)
	c.mu.Lock()
	c.agents[host] = cmd
	c.mu.Unlock()
}

// api is a Consul client to the server agent from the test's namespace.
func (c *cluster) api(token string) *consul.Client {
	cfg := consul.DefaultConfig()
	cfg.Address = subnet + "1:" + c.consulPort()
	cfg.Token = token
	if c.tls != nil {
		f := c.tls.consulClient
		cfg.Scheme, cfg.TLSConfig = "https", consul.TLSConfig{CAFile: f.CA, CertFile: f.Cert, KeyFile: f.Key}
	}
	cl, err := consul.NewClient(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	return cl
}

func (c *cluster) waitConsulACL() {
	cl := c.api(c.mgmt)
	eventually(c.t, 60*time.Second, "consul server with ACLs", func() bool {
		_, _, err := cl.ACL().TokenReadSelf(nil)
		return err == nil
	})
}

func (c *cluster) makeTokens() {
	acl := c.api(c.mgmt).ACL()
	mk := func(name, rules string) string {
		pol, _, err := acl.PolicyCreate(&consul.ACLPolicy{Name: name + "-" + uuid.NewString()[:6], Rules: rules}, nil)
		if err != nil {
			c.t.Fatalf("policy %s: %v", name, err)
		}
		tok, _, err := acl.TokenCreate(&consul.ACLToken{Policies: []*consul.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
		if err != nil {
			c.t.Fatalf("token %s: %v", name, err)
		}
		return tok.SecretID
	}
	c.driverToken = mk("llorch-driver", consultest.DriverPolicy(c.t))
	c.routerToken = mk("llorch-router", consultest.RouterPolicy(c.t))
	c.agentTokens = map[string]string{}
	for _, h := range []string{"n1", "n2", "n3"} {
		c.agentTokens[h] = mk("consul-agent-"+h, fmt.Sprintf("node %q { policy = \"write\" }\nservice_prefix \"\" { policy = \"read\" }\n", h))
	}
	c.driverTokFile = c.secret("consul-driver.token", c.driverToken)
	c.routerTokFile = c.secret("consul-router.token", c.routerToken)
}

// startRouter runs `llorch router` on the control host.
// In the TLS variant: the listener serves HTTPS (no plaintext allowance),
// engines announcing tls=1 are verified against the CA with a client
// certificate offered, and Consul is reached at https:// with the router's
// own client pair (flags, as an operator would set them).
func (c *cluster) startRouter() {
	env := []string{
		"LLORCH_ADDR=" + subnet + "1:8080", "LLORCH_API_TOKEN_FILE=" + c.apiTokFile, "LLORCH_KEYS_FILE=" + c.keysFile,
		"LLORCH_ENGINE_TOKEN_FILE=" + c.engineTokFile,
		"CONSUL_HTTP_TOKEN_FILE=" + c.routerTokFile, "LLORCH_CONNECT_TIMEOUT=500ms", "LLORCH_LOG_LEVEL=debug", "LLORCH_QUEUE_CAPACITY=64",
	}
	args := []string{"router"}
	if x := c.tls; x != nil {
		env = append(env, "LLORCH_TLS_CERT_FILE="+x.routerListen.Cert, "LLORCH_TLS_KEY_FILE="+x.routerListen.Key,
			"LLORCH_ENGINE_CA_FILE="+x.routerToEngines.CA, "LLORCH_ENGINE_CERT_FILE="+x.routerToEngines.Cert, "LLORCH_ENGINE_KEY_FILE="+x.routerToEngines.Key,
			"CONSUL_HTTP_ADDR=https://127.0.0.1:"+c.consulPort())
		args = append(args, "--consul-ca-file="+x.routerToConsul.CA, "--consul-cert-file="+x.routerToConsul.Cert, "--consul-key-file="+x.routerToConsul.Key)
	} else {
		env = append(env, "LLORCH_ALLOW_PLAINTEXT=true", "CONSUL_HTTP_ADDR=127.0.0.1:8500")
	}
	c.router = c.spawn("ctl", "router", env, c.bin, args...)
	eventually(c.t, 20*time.Second, "router /healthz", func() bool {
		resp, err := c.http.Get(c.routerURL() + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

// startDriver launches the plugin on a host as the Nomad agent would.
func (c *cluster) startDriver(host string) *nomadclient.Plugin {
	cmd := exec.Command("ip", "netns", "exec", c.f.ns(host), c.bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := nomadclient.LaunchCmd(c.t, cmd)
	spec, err := p.Base.ConfigSchema(ctx(c.t, 5*time.Second), &base.ConfigSchemaRequest{})
	if err != nil {
		c.t.Fatal(err)
	}
	cons := map[string]interface{}{"address": "127.0.0.1:8500", "token_file": c.driverTokFile}
	if x := c.tls; x != nil {
		// host:port with the files: the files alone mean HTTPS.
		cons = map[string]interface{}{"address": "127.0.0.1:" + c.consulPort(), "token_file": c.driverTokFile,
			"ca_file": x.driverToConsul.CA, "cert_file": x.driverToConsul.Cert, "key_file": x.driverToConsul.Key}
	}
	b, err := nomadclient.EncodeConfig(spec.GetSpec(), map[string]interface{}{
		"engines":           map[string]interface{}{"llamacpp": c.llama},
		"consul":            cons,
		"engine_token_file": c.engineTokFile,
		"advertise_address": c.f.hosts[host],
		"node_id":           host,
	})
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := p.Base.SetConfig(ctx(c.t, 5*time.Second), &base.SetConfigRequest{MsgpackConfig: b, PluginApiVersion: "v0.1.0",
		NomadConfig: &base.NomadConfig{Driver: &base.NomadDriverConfig{ClientMaxPort: 14512, ClientMinPort: 14000}}}); err != nil {
		c.t.Fatalf("SetConfig on %s: %v", host, err)
	}
	c.mu.Lock()
	c.plugins[host] = p
	c.mu.Unlock()
	return p
}

func (c *cluster) plugin(host string) *nomadclient.Plugin {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.plugins[host]
}

// startTask starts an engine for model on host through the driver.
func (c *cluster) startTask(host, model string, port int) *task {
	return c.startTaskFile(host, model, c.model, port)
}

// startTaskFile starts an engine task for model served from file.
func (c *cluster) startTaskFile(host, model, file string, port int) *task {
	p := c.plugin(host)
	tk := &task{host: host, allocID: uuid.NewString(), marker: uuid.NewString()}
	tk.dir = filepath.Join(c.dir, "alloc-"+tk.allocID[:8])
	for _, d := range []string{"alloc/logs", "engine/local", "engine/secrets", "engine/tmp"} {
		os.MkdirAll(filepath.Join(tk.dir, d), 0o755)
	}
	tk.id = tk.allocID + "/engine/" + uuid.NewString()[:8]
	ts, err := p.Driver.TaskConfigSchema(ctx(c.t, 5*time.Second), &drivers.TaskConfigSchemaRequest{})
	if err != nil {
		c.t.Fatal(err)
	}
	tc := map[string]interface{}{
		"engine": "llamacpp", "model": file, "model_name": model, "port": "http",
		"slots": 4, "ctx": 512, "threads": 1, "pool": model + "-pool",
	}
	if c.tls != nil {
		tc["tls_cert_file"], tc["tls_key_file"] = c.tls.taskPair(c, tk)
	}
	b, err := nomadclient.EncodeConfig(ts.GetSpec(), tc)
	if err != nil {
		c.t.Fatal(err)
	}
	out, errf := filepath.Join(tk.dir, "alloc/logs/engine.stdout"), filepath.Join(tk.dir, "alloc/logs/engine.stderr")
	c.mu.Lock()
	c.logs = append(c.logs, out, errf, filepath.Join(tk.dir, "engine"))
	c.mu.Unlock()
	cfg := nomadclient.Alloc{ID: tk.allocID, Task: "engine", Dir: tk.dir, Port: port, HostIP: c.f.hosts[host],
		StdoutPath: out, StderrPath: errf, Env: map[string]string{"LLORCH_MARKER": tk.marker},
		Job: model, Group: "engine", NodeID: host, NodeName: host}.TaskConfig(tk.id[strings.LastIndexByte(tk.id, '/')+1:], b)
	resp, err := p.Driver.StartTask(ctx(c.t, 20*time.Second), &drivers.StartTaskRequest{Task: cfg})
	if err != nil {
		c.t.Fatalf("StartTask %s on %s: %v", model, host, err)
	}
	tk.handle = resp.GetHandle()
	return tk
}

func (c *cluster) stopTask(tk *task) {
	p := c.plugin(tk.host)
	_, err := p.Driver.StopTask(ctx(c.t, 20*time.Second), &drivers.StopTaskRequest{TaskId: tk.id, Timeout: nil, Signal: ""})
	if err != nil {
		c.t.Fatalf("StopTask: %v", err)
	}
	p.Driver.DestroyTask(ctx(c.t, 10*time.Second), &drivers.DestroyTaskRequest{TaskId: tk.id, Force: true})
}

// enginePID finds the task's engine process by its marker.
func enginePID(tk *task) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		if err != nil || !bytes.Contains(env, []byte("LLORCH_MARKER="+tk.marker)) {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if bytes.Contains(cmdline, []byte("llama-server")) && !bytes.Contains(cmdline, []byte("task-supervisor")) {
			return pid
		}
	}
	return 0
}

// ---- the router, as users see it ----

// node → engine ids (healthy ones)

func ctx(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
