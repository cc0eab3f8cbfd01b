package driver

import (
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/llorch/llorch/internal/nomadpb/drivers"
)

// eventBroker fans task events out to the TaskEvents streams (the agent
// opens one per plugin process). A slow stream loses events rather than
// blocking the task's lifecycle.
type eventBroker struct {
	mu   sync.Mutex
	subs map[chan *drivers.DriverTaskEvent]struct{}
}

func newEventBroker() *eventBroker {
	return &eventBroker{subs: map[chan *drivers.DriverTaskEvent]struct{}{}}
}

func (b *eventBroker) subscribe() (<-chan *drivers.DriverTaskEvent, func()) {
	ch := make(chan *drivers.DriverTaskEvent, 64)
	b.mu.Lock()
	b.subs[ch] = struct{}{}
	b.mu.Unlock()
	return ch, func() {
		b.mu.Lock()
		delete(b.subs, ch)
		b.mu.Unlock()
	}
}

func (b *eventBroker) emit(h *taskHandle, msg string, annotations map[string]string) {
	ev := &drivers.DriverTaskEvent{
		TaskId:      h.st.TaskID,
		AllocId:     h.st.AllocID,
		TaskName:    h.st.TaskName,
		Timestamp:   timestamppb.New(time.Now()),
		Message:     msg,
		Annotations: annotations,
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}
