package driver

// Seam for the engines/Consul helper: these are called by the lifecycle at
// the right moments. Each gets the task's handle (see handle.go accessors:
// Spec, Host, Port, EngineName, Adapter, NodeID, AllocID, TaskName, Pid,
// Env, InstanceID, PoolID, ServiceName, Context, Exited) and the plugin
// config via d.config(). They must not block the lifecycle: long work runs
// in a goroutine owned by h.Context(), which ends when the task exits or is
// stopped.

// announceStart runs after the engine process is launched.
func (d *Driver) announceStart(h *taskHandle) {
	d.log.Debug("announce start", "task_id", h.TaskID(), "instance_id", h.InstanceID())
}

// announceExit runs when the engine process has exited.
func (d *Driver) announceExit(h *taskHandle) {
	d.log.Debug("announce exit", "task_id", h.TaskID(), "instance_id", h.InstanceID())
}

// announceStop runs at the start of StopTask and of a forced DestroyTask,
// so the instance leaves the registry before the engine goes.
func (d *Driver) announceStop(h *taskHandle) {
	d.log.Debug("announce stop", "task_id", h.TaskID(), "instance_id", h.InstanceID())
}

// announceRecover runs after RecoverTask reattached a task.
func (d *Driver) announceRecover(h *taskHandle) {
	d.log.Debug("announce recover", "task_id", h.TaskID(), "instance_id", h.InstanceID())
}
