package router

import (
	"context"
	"sync"
)

// taskGroup owns the goroutines that run /v2 tasks: they outlive the
// submit request, so the router's Run stops and waits for them when it
// ends, and no task runs on (or logs) after its router is gone.
type taskGroup struct {
	mu      sync.Mutex
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	stopped bool
}

func newTaskGroup() *taskGroup {
	ctx, cancel := context.WithCancel(context.Background())
	return &taskGroup{ctx: ctx, cancel: cancel}
}

// context is the parent of every task's context.
func (g *taskGroup) context() context.Context { return g.ctx }

// goTask runs fn on its own goroutine unless the group has stopped.
func (g *taskGroup) goTask(fn func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return false
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		fn()
	}()
	return true
}

// stop cancels every task and waits for them to end.
func (g *taskGroup) stop() {
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
	g.cancel()
	g.wg.Wait()
}
