// What the driver keeps about its tasks: the persisted per-task state
// (the handle's driver_state) and the in-memory store of handles.

package driver

import (
	"sync"
	"time"

	"github.com/llorch/llorch/engine"
)

// handleVersion is TaskHandle.version; bump it when taskState changes
// incompatibly so an old state is refused instead of misread.
const handleVersion = 1

// taskState is everything needed to find and manage a task again; it is
// the handle's driver_state (JSON), because after an agent restart
// RecoverTask gets no task config bytes and no task id. It never holds the
// engine API key: driver_state is stored in the agent's state database.
type taskState struct {
	Version int `json:"version"`

	TaskID    string `json:"task_id"` // <alloc id>/<task name>/<8 hex>
	AllocID   string `json:"alloc_id"`
	TaskName  string `json:"task_name"`
	JobName   string `json:"job_name"`
	JobID     string `json:"job_id"`
	Group     string `json:"group"`
	Namespace string `json:"namespace"`
	NodeID    string `json:"node_id"`
	NodeName  string `json:"node_name"`

	Config TaskConfig  `json:"config"` // decoded task config
	Engine string      `json:"engine"` // adapter name
	Binary string      `json:"binary"`
	Spec   engine.Spec `json:"spec"` // what the adapter built the command from; APIKey cleared

	// Host is the address announced to the registry, BindHost the one the
	// engine listens on, Port the host port.
	Host      string `json:"host"`
	BindHost  string `json:"bind_host"`
	Port      int    `json:"port"`
	PortLabel string `json:"port_label,omitempty"`

	PoolID      string `json:"pool_id"`
	ServiceName string `json:"service_name"`
	InstanceID  string `json:"instance_id"` // registry id, stable for the task's life

	// Env is the engine's full environment. It stays out of driver_state
	// (the agent persists that; the env may hold secrets): it lives in the
	// 0600 supervisor spec in StateDir and is read back on recovery.
	Env        map[string]string `json:"-"`
	TaskDir    string            `json:"task_dir"`
	StateDir   string            `json:"state_dir"`
	StdoutPath string            `json:"stdout_path"`
	StderrPath string            `json:"stderr_path"`

	Supervisor engineRecord `json:"supervisor"`
	EnginePID  engineRecord `json:"engine_pid"`
	StartedAt  time.Time    `json:"started_at"`

	// GPUReservation is gpu.go's opaque record of what the task holds.
	GPUReservation []byte `json:"gpu_reservation,omitempty"`
}

// taskStore holds the handles by task id.
type taskStore struct {
	mu    sync.RWMutex
	tasks map[string]*taskHandle
}

func newTaskStore() *taskStore { return &taskStore{tasks: map[string]*taskHandle{}} }

func (s *taskStore) get(id string) *taskHandle {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.tasks[id]
}

// putNew stores h unless a task with its id exists.
func (s *taskStore) putNew(h *taskHandle) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.tasks[h.st.TaskID]; ok {
		return false
	}
	s.tasks[h.st.TaskID] = h
	return true
}

func (s *taskStore) delete(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tasks, id)
}

func (s *taskStore) all() []*taskHandle {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*taskHandle, 0, len(s.tasks))
	for _, h := range s.tasks {
		out = append(out, h)
	}
	return out
}
