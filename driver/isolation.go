// Isolating a task's engine: the user it runs as, its cgroup (memory and
// CPU limits, OOM accounting), its oom_score_adj, and the token relay in
// front of engines that have no authentication of their own. prepare
// calls isolationFor (checks only, nothing created); launch calls
// setupIsolation (creates the cgroup, hands the engine its state dir);
// DestroyTask calls teardownIsolation.

package driver

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/llorch/llorch/driver/cgroup"
	"github.com/llorch/llorch/driver/users"
	"github.com/llorch/llorch/engine"
	"github.com/llorch/llorch/internal/nomadpb/drivers"
)

// isolation is what a task's engine runs under; it is part of the task
// state (driver_state) so exec and clean-up work the same after a plugin
// restart.
type isolation struct {
	User        users.Identity `json:"user"`
	OOMScoreAdj int            `json:"oom_score_adj"`
	// Cgroup is nil where the host has none the driver can use.
	Cgroup *cgroup.Group `json:"cgroup,omitempty"`
	Limits cgroup.Limits `json:"limits"`
	// Relay is set for engines without authentication: the supervisor
	// listens on the task's port and forwards authenticated requests to
	// the engine on loopback.
	Relay *relaySpec `json:"relay,omitempty"`
}

// relaySpec is where the supervisor's token relay listens and forwards.
type relaySpec struct {
	Listen    string `json:"listen"`
	Target    string `json:"target"`
	TokenFile string `json:"token_file"`
	// TLS on the task's port (empty: plain HTTP).
	TLSCertFile  string `json:"tls_cert_file,omitempty"`
	TLSKeyFile   string `json:"tls_key_file,omitempty"`
	ClientCAFile string `json:"client_ca_file,omitempty"`
}

// isolationFor resolves the task's user (task user, else default_user,
// else the plugin's own), checks it against the denied ranges and the
// files it must read, and plans the cgroup and relay. It creates nothing.
func (d *Driver) isolationFor(tc *drivers.TaskConfig, st *taskState, adapter engine.Adapter, apiKey string) (isolation, error) {
	cfg := d.config()
	var iso isolation
	spec, from := tc.GetUser(), "the job's user"
	if spec == "" {
		spec, from = cfg.DefaultUser, "plugin default_user"
	}
	var err error
	if spec == "" {
		iso.User, err = users.Current()
		from = "the plugin's own user"
	} else {
		iso.User, err = users.Lookup(spec)
	}
	if err != nil {
		return iso, permanentError(codes.InvalidArgument, "task user %q from %s: %v", spec, from, err)
	}
	if err := users.Check(iso.User, cfg.DeniedHostUIDs, cfg.DeniedHostGIDs); err != nil {
		return iso, permanentError(codes.PermissionDenied, "task user from %s: %v", from, err)
	}
	if !iso.User.IsCurrent() {
		if os.Geteuid() != 0 {
			return iso, permanentError(codes.FailedPrecondition, "task user %s: the plugin runs as uid %d and cannot switch users (run the Nomad client as root)", iso.User, os.Geteuid())
		}
		if filepath.IsAbs(st.Spec.Model) {
			if err := readableBy(st.Spec.Model, iso.User); err != nil {
				return iso, permanentError(codes.PermissionDenied, "task config: field %q: %v", "model", err)
			}
		}
		if err := executableBy(st.Binary, iso.User); err != nil {
			return iso, permanentError(codes.PermissionDenied, "engine %s: %v", st.Engine, err)
		}
	}

	res := tc.GetResources()
	iso.OOMScoreAdj = int(res.GetLinuxResources().GetOomScoreAdj())
	if iso.OOMScoreAdj < -1000 || iso.OOMScoreAdj > 1000 {
		return iso, permanentError(codes.InvalidArgument, "resources: oom_score_adj %d is outside -1000..1000", iso.OOMScoreAdj)
	}
	iso.Limits = limitsOf(res)
	if g, err := d.cgroupFor(tc, st); err != nil {
		d.log.Warn("task runs without a cgroup", "task_id", st.TaskID, "error", err)
	} else {
		iso.Cgroup = &g
	}

	if !adapter.TakesAPIKey() {
		if apiKey == "" {
			return iso, permanentError(codes.FailedPrecondition,
				"engine %s has no authentication of its own: set engine_token_file in the plugin config so the driver's relay demands the engine token on the task's port", st.Engine)
		}
		inner, err := freeLoopbackPort()
		if err != nil {
			return iso, recoverableError("engine %s: pick a loopback port for the engine behind the relay: %v", st.Engine, err)
		}
		iso.Relay = &relaySpec{Listen: joinHostPort(st.BindHost, st.Port), Target: joinHostPort("127.0.0.1", inner)}
		st.Spec.Host, st.Spec.Port = "127.0.0.1", inner
	}
	return iso, nil
}

// limitsOf reads the task's resources the way the agent's own executor
// does: memory_max is the hard limit and memory the soft one when both
// are set, else memory is the hard limit.
func limitsOf(res *drivers.Resources) cgroup.Limits {
	mem := res.GetAllocatedResources().GetMemory()
	hard, soft := mem.GetMemoryMaxMb(), mem.GetMemoryMb()
	if hard <= 0 {
		hard, soft = soft, 0
	}
	l := cgroup.Limits{MemoryMax: hard << 20, MemoryLow: soft << 20, CPUShares: res.GetLinuxResources().GetCpuShares()}
	if l.MemoryMax <= 0 {
		l.MemoryMax = res.GetLinuxResources().GetMemoryLimitBytes()
	}
	if l.CPUShares <= 0 {
		l.CPUShares = res.GetAllocatedResources().GetCpu().GetCpuShares()
	}
	return l
}

// cgroupFor is the agent's task cgroup when it names one, else a new one
// under the plugin's own cgroup, one per task attempt.
func (d *Driver) cgroupFor(tc *drivers.TaskConfig, st *taskState) (cgroup.Group, error) {
	m, err := cgroup.ReadMounts("")
	if err != nil {
		return cgroup.Group{}, err
	}
	self, err := cgroup.Self()
	if err != nil {
		return cgroup.Group{}, err
	}
	parts := strings.Split(st.TaskID, "/")
	name := unsafeName.ReplaceAllString(st.AllocID+"."+st.TaskName+"."+parts[len(parts)-1], "_")
	return cgroup.Resolve(m, tc.GetResources().GetLinuxResources().GetCpusetCgroup(), self, name)
}

// setupIsolation creates the task's cgroup and writes its limits, and
// hands the engine's own state dir to the task user. It returns warnings
// for the task's events (a limit the host cannot enforce); an error means
// nothing is left to undo.
func (d *Driver) setupIsolation(st *taskState) (warnings []string, err error) {
	iso := &st.Isolation
	if iso.Cgroup != nil {
		if err := iso.Cgroup.Create(iso.Limits); err != nil {
			var ne *cgroup.NotEnforcedError
			if !errors.As(err, &ne) {
				// Like the agent's own executor: a plugin without the
				// rights (not root) or a host without usable cgroups
				// still runs the task, and says what it lacks.
				_ = iso.Cgroup.Remove(time.Second)
				iso.Cgroup = nil
				warnings = append(warnings, fmt.Sprintf("Engine runs without a cgroup (memory limit of %d MiB not enforced, OOM kills not detected): %v", iso.Limits.MemoryMax>>20, err))
			} else {
				warnings = append(warnings, fmt.Sprintf("Memory limit of %d MiB not enforced: %v", iso.Limits.MemoryMax>>20, err))
			}
		}
	} else if iso.Limits.MemoryMax > 0 {
		warnings = append(warnings, fmt.Sprintf("Memory limit of %d MiB not enforced: no usable cgroup on this node", iso.Limits.MemoryMax>>20))
	}
	if !iso.User.IsCurrent() {
		// The supervisor's files stay root's (0600); the user may pass
		// through the state dir to its own engine dir, and nothing else.
		for dir := filepath.Dir(st.Spec.StateDir); dir != st.TaskDir && strings.HasPrefix(dir, st.TaskDir+"/"); dir = filepath.Dir(dir) {
			if err := os.Chmod(dir, 0o711); err != nil {
				return warnings, recoverableError("task state dir: %v", err)
			}
		}
		if err := os.Chown(st.Spec.StateDir, int(iso.User.UID), int(iso.User.GID)); err != nil {
			return warnings, recoverableError("hand the engine state dir to %s: %v", iso.User, err)
		}
	}
	return warnings, nil
}

// teardownIsolation kills whatever is left in a driver-made cgroup and
// removes it; the agent removes its own.
func (d *Driver) teardownIsolation(h *taskHandle) {
	g := h.st.Isolation.Cgroup
	if g == nil || len(g.Made) == 0 {
		return
	}
	if err := g.KillAll(); err != nil {
		d.log.Warn("destroy task: kill cgroup", "task_id", h.st.TaskID, "error", err)
	}
	if err := g.Remove(5 * time.Second); err != nil {
		d.log.Warn("destroy task: remove cgroup", "task_id", h.st.TaskID, "error", err)
	}
}

// credential is the SysProcAttr credential for the task's user; nil when
// it is the caller's own.
func credential(id users.Identity) *syscall.Credential {
	if id.IsCurrent() || (id.UID == 0 && id.GID == 0 && id.Name == "") {
		return nil
	}
	return &syscall.Credential{Uid: id.UID, Gid: id.GID, Groups: id.Groups}
}

// readableBy checks, from the mode bits, that id may read path: every
// directory above it searchable, the file itself readable.
func readableBy(path string, id users.Identity) error {
	if id.UID == 0 {
		return nil
	}
	return accessBy(path, id, 4)
}

func executableBy(path string, id users.Identity) error {
	if id.UID == 0 || path == "" {
		return nil
	}
	return accessBy(path, id, 1)
}

func accessBy(path string, id users.Identity, want uint32) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	for dir := filepath.Dir(abs); ; dir = filepath.Dir(dir) {
		if !permits(dir, id, 1) {
			return fmt.Errorf("%s: user %s cannot enter directory %s", path, id, dir)
		}
		if dir == "/" {
			break
		}
	}
	if !permits(abs, id, want) {
		verb := map[uint32]string{4: "read", 1: "execute"}[want]
		return fmt.Errorf("%s is not %sable by user %s (mode and owner forbid it)", path, verb, id)
	}
	return nil
}

func permits(path string, id users.Identity, want uint32) bool {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return false
	}
	mode := st.Mode & 0o777
	switch {
	case st.Uid == id.UID:
		return mode>>6&want == want
	case st.Gid == id.GID || containsID(id.Groups, st.Gid):
		return mode>>3&want == want
	default:
		return mode&want == want
	}
}

func containsID(xs []uint32, x uint32) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// oomMessage is the task event for an OOM-killed engine.
func oomMessage(h *taskHandle) string {
	msg := "OOM Killed: the engine exceeded its memory limit"
	if m := h.st.Isolation.Limits.MemoryMax; m > 0 {
		msg += " of " + strconv.FormatInt(m>>20, 10) + " MiB"
	}
	return msg
}
