// Package e2e runs llorch on several hosts: network namespaces joined by a
// bridge, each GPU host with its own Consul client agent, the llorch driver
// (driven by our protocol client as a Nomad agent would) and real
// llama-server engines; a control host with the Consul server and the
// router. Tests need root (ip netns); they skip without it, and fail in CI.
package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os/exec"
	"strings"
)

// subnet is private to namespaces this test creates; nothing outside them
// is ever addressed.
const subnet = "10.99.0."

// fabric is the virtual network: a switch namespace with a bridge and one
// namespace per host.
type fabric struct {
	prefix string // short, unique per run: names stay under 15 chars
	sw     string
	hosts  map[string]string // host name → IP
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// sweep removes namespaces and links an earlier, crashed run left.
func sweep() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && strings.HasPrefix(f[0], "llx") {
			killNamespace(f[0])
			_ = ipCmd("netns", "del", f[0])
		}
	}
	out, _ = exec.Command("ip", "-o", "link").Output()
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) > 1 {
			name := strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]
			if strings.HasPrefix(name, "llx") {
				_ = ipCmd("link", "del", name)
			}
		}
	}
}

func newFabric() (*fabric, error) {
	b := make([]byte, 2)
	rand.Read(b)
	f := &fabric{prefix: "llx" + hex.EncodeToString(b)[:3], hosts: map[string]string{}}
	f.sw = f.prefix + "sw"
	steps := [][]string{
		{"netns", "add", f.sw},
		{"-n", f.sw, "link", "add", "br0", "type", "bridge"},
		{"-n", f.sw, "link", "set", "br0", "up"},
		{"-n", f.sw, "link", "set", "lo", "up"},
		// The test process (root namespace) reaches the hosts through its
		// own port on the bridge.
		{"link", "add", f.prefix + "root", "type", "veth", "peer", "name", f.prefix + "sroot"},
		{"link", "set", f.prefix + "sroot", "netns", f.sw},
		{"-n", f.sw, "link", "set", f.prefix + "sroot", "master", "br0", "up"},
		{"addr", "add", subnet + "254/24", "dev", f.prefix + "root"},
		{"link", "set", f.prefix + "root", "up"},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			f.destroy()
			return nil, err
		}
	}
	return f, nil
}

func (f *fabric) ns(host string) string { return f.prefix + host }

// addHost creates a host namespace with one interface on the bridge.
func (f *fabric) addHost(host, ip string) error {
	ns, inner, outer := f.ns(host), f.prefix+"h"+host, f.prefix+"s"+host
	for _, s := range [][]string{
		{"netns", "add", ns},
		{"link", "add", inner, "type", "veth", "peer", "name", outer},
		{"link", "set", inner, "netns", ns},
		{"link", "set", outer, "netns", f.sw},
		{"-n", f.sw, "link", "set", outer, "master", "br0", "up"},
		{"-n", ns, "addr", "add", ip + "/24", "dev", inner},
		{"-n", ns, "link", "set", inner, "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	} {
		if err := ipCmd(s...); err != nil {
			return err
		}
	}
	f.hosts[host] = ip
	return nil
}

// cut and heal take a host's port on the switch down and up: the host is
// partitioned from everyone, its processes keep running.
func (f *fabric) cut(host string) error {
	return ipCmd("-n", f.sw, "link", "set", f.prefix+"s"+host, "down")
}
func (f *fabric) heal(host string) error {
	return ipCmd("-n", f.sw, "link", "set", f.prefix+"s"+host, "up")
}

// in returns a command that runs inside host's namespace.
func (f *fabric) in(host, bin string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", f.ns(host), bin}, args...)...)
}

// killNamespace SIGKILLs every process left in a namespace.
func killNamespace(ns string) {
	out, _ := exec.Command("ip", "netns", "pids", ns).Output()
	for _, p := range strings.Fields(string(out)) {
		_ = exec.Command("kill", "-9", p).Run()
	}
}

func (f *fabric) destroy() {
	for h := range f.hosts {
		killNamespace(f.ns(h))
	}
	for h := range f.hosts {
		_ = ipCmd("netns", "del", f.ns(h))
	}
	_ = ipCmd("netns", "del", f.sw)
	_ = ipCmd("link", "del", f.prefix+"root")
}
