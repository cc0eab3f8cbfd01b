package cli

import "github.com/llorch/llorch/driver"

// The per-task supervisor the driver starts (never run by hand): it is the
// engine's parent, so the engine's exit status survives plugin restarts.
func init() {
	Register(Command{
		Name:    driver.SupervisorCommand,
		Summary: "(internal) per-task supervisor started by the Nomad driver",
		Run:     driver.RunSupervisor,
	})
}
