// The supervisor's side of isolation: it starts the engine as the task's
// user, inside the task's cgroup, with the task's oom_score_adj, runs the
// token relay for engines without authentication, and tells an OOM kill
// from any other SIGKILL when the engine exits.

package driver

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/llorch/llorch/driver/relay"
)

// oomBaseline is the group's OOM-kill count before the engine started.
type oomBaseline struct {
	kills   uint64
	counted bool
	failcnt uint64
}

// startEngine starts cmd under iso. The engine inherits everything at
// fork: the credential is applied between fork and exec, the
// oom_score_adj is the supervisor's own for the moment of the fork, and
// the cgroup is entered at clone (v2) or by the supervisor for the moment
// of the fork (v1), so the engine never runs a moment outside them.
func startEngine(cmd *exec.Cmd, iso isolation, logLine func(string, ...interface{})) (oomBaseline, error) {
	var base oomBaseline
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = credential(iso.User)

	restoreScore, err := setOwnOOMScoreAdj(iso.OOMScoreAdj)
	if err != nil {
		if os.Geteuid() == 0 {
			return base, err
		}
		// Unprivileged, a score below the inherited one cannot be set:
		// the engine keeps the plugin's, as any child would.
		logLine("%v (unprivileged; the engine keeps the inherited score)", err)
	}
	defer restoreScore()

	if g := iso.Cgroup; g != nil {
		base.kills, base.counted = g.OOMKills()
		base.failcnt = g.Failcnt()
		switch g.Version {
		case 2:
			fd, err := g.OpenFD()
			if err != nil {
				return base, err
			}
			defer syscall.Close(fd)
			cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, fd
		case 1:
			leave, err := g.EnterV1()
			if err != nil {
				return base, fmt.Errorf("enter task cgroup: %w", err)
			}
			defer func() {
				if err := leave(); err != nil {
					logLine("leave task cgroup: %v", err)
				}
			}()
		}
	}
	return base, cmd.Start()
}

// setOwnOOMScoreAdj sets the supervisor's oom_score_adj so the engine
// forked next inherits it, and returns the restore. The supervisor keeps
// what the agent gave it (often -1000): it must outlive an OOM-killed
// engine to report it.
func setOwnOOMScoreAdj(v int) (func(), error) {
	const f = "/proc/self/oom_score_adj"
	old, err := os.ReadFile(f)
	if err != nil {
		return func() {}, fmt.Errorf("read oom_score_adj: %w", err)
	}
	if strings.TrimSpace(string(old)) == strconv.Itoa(v) {
		return func() {}, nil
	}
	if err := os.WriteFile(f, []byte(strconv.Itoa(v)), 0o644); err != nil {
		return func() {}, fmt.Errorf("set oom_score_adj %d: %w", v, err)
	}
	return func() { _ = os.WriteFile(f, old, 0o644) }, nil
}

// engineOOMKilled decides whether the engine's exit was the kernel's OOM
// killer: the group's oom_kill count went up, or (kernels that do not
// count kills) it died of SIGKILL after its group hit the memory limit.
func engineOOMKilled(iso isolation, base oomBaseline, sig syscall.Signal) bool {
	g := iso.Cgroup
	if g == nil {
		return false
	}
	if base.counted {
		n, _ := g.OOMKills()
		return n > base.kills
	}
	return sig == syscall.SIGKILL && g.Failcnt() > base.failcnt
}

// startRelay starts the token relay when the task has one.
func startRelay(iso isolation, logLine func(string, ...interface{})) (*relay.Relay, error) {
	r := iso.Relay
	if r == nil {
		return nil, nil
	}
	log := hclog.New(&hclog.LoggerOptions{Name: "relay", Output: relayLog{logLine}, Level: hclog.Info, DisableTime: true})
	rl, err := relay.Start(r.Listen, r.Target, r.TokenFile, relay.TLS{CertFile: r.TLSCertFile, KeyFile: r.TLSKeyFile, ClientCAFile: r.ClientCAFile}, log)
	if err != nil {
		return nil, err
	}
	logLine("relay listening on %s for the engine on %s (engine token required, tls %v, client certificates %v)", rl.Addr, r.Target, r.TLSCertFile != "", r.ClientCAFile != "")
	return rl, nil
}

// relayLog puts the relay's log lines into supervisor.log.
type relayLog struct{ logLine func(string, ...interface{}) }

func (l relayLog) Write(p []byte) (int, error) {
	l.logLine("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
