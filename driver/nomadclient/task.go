package nomadclient

import (
	"os"
	"path/filepath"
	"strconv"

	"github.com/llorch/llorch/internal/nomadpb/drivers"
)

// Alloc is one task's allocation as a Nomad agent prepares it. The tests,
// the e2e suite and the benchmark all start tasks through it, so they send
// StartTask exactly what the agent would.
type Alloc struct {
	ID, Task, Dir string
	Port          int
	HostIP        string // the port mapping's host IP; default 127.0.0.1
	// StdoutPath and StderrPath default to logmon's FIFOs under Dir.
	StdoutPath, StderrPath string
	Env                    map[string]string // added to the agent's task env
	Job, Group             string
	NodeID, NodeName       string

	// User is task.user (TaskConfig.user); "" when the job sets none.
	User string
	// DeviceEnv is what the agent's device hooks set for a task with a
	// `device` block (Nomad's nvidia plugin: NVIDIA_VISIBLE_DEVICES). The
	// agent sends it as TaskConfig.device_env and also in the task env.
	DeviceEnv map[string]string
	// MemoryMB and MemoryMaxMB are the task's resources.memory and
	// memory_max (default 256 and none); LinuxResources.memory_limit_bytes
	// is the larger, as the agent computes it.
	MemoryMB, MemoryMaxMB int64
	// CpusetCgroup is LinuxResources.cpuset_cgroup: the cgroup the agent
	// made for the task (cgroup v2: the task's own; v1: its cpuset one).
	CpusetCgroup string
	// OomScoreAdj is LinuxResources.oom_score_adj (the agent sends 0 unless
	// the job sets one).
	OomScoreAdj int64
}

// TaskConfig is StartTask's TaskConfig for the alloc: attempt is the
// 8-hex suffix the agent puts on each start's task id.
func (a Alloc) TaskConfig(attempt string, msgpack []byte) *drivers.TaskConfig {
	logs := filepath.Join(a.Dir, "alloc", "logs")
	stdout, stderr := a.StdoutPath, a.StderrPath
	if stdout == "" {
		stdout = filepath.Join(logs, "."+a.Task+".stdout.fifo")
	}
	if stderr == "" {
		stderr = filepath.Join(logs, "."+a.Task+".stderr.fifo")
	}
	hostIP := a.HostIP
	if hostIP == "" {
		hostIP = "127.0.0.1"
	}
	env := map[string]string{
		"PATH":            os.Getenv("PATH"),
		"NOMAD_ALLOC_ID":  a.ID,
		"NOMAD_TASK_NAME": a.Task,
		"NOMAD_PORT_http": strconv.Itoa(a.Port),
	}
	for k, v := range a.Env {
		env[k] = v
	}
	for k, v := range a.DeviceEnv {
		env[k] = v
	}
	memMB := a.MemoryMB
	if memMB == 0 {
		memMB = 256
	}
	limit := max(memMB, a.MemoryMaxMB) << 20
	return &drivers.TaskConfig{
		Id:                  a.ID + "/" + a.Task + "/" + attempt,
		Name:                a.Task,
		MsgpackDriverConfig: msgpack,
		Env:                 env,
		DeviceEnv:           a.DeviceEnv,
		User:                a.User,
		Resources: &drivers.Resources{
			AllocatedResources: &drivers.AllocatedTaskResources{
				Cpu:    &drivers.AllocatedCpuResources{CpuShares: 500},
				Memory: &drivers.AllocatedMemoryResources{MemoryMb: memMB, MemoryMaxMb: a.MemoryMaxMB},
			},
			LinuxResources: &drivers.LinuxResources{CpuShares: 500, MemoryLimitBytes: limit,
				OomScoreAdj: a.OomScoreAdj, CpusetCgroup: a.CpusetCgroup},
			Ports: []*drivers.PortMapping{{Label: "http", Value: int32(a.Port), To: int32(a.Port), HostIp: hostIP}},
		},
		AllocDir:      a.Dir,
		StdoutPath:    stdout,
		StderrPath:    stderr,
		TaskGroupName: a.Group,
		JobName:       a.Job,
		JobId:         a.Job,
		Namespace:     "default",
		AllocId:       a.ID,
		NodeName:      a.NodeName,
		NodeId:        a.NodeID,
	}
}
