package driver

import (
	"strings"
	"testing"

	"github.com/llorch/llorch/engine"
)

// placeTLS gives the pair to the relay when there is one, else to an
// engine that serves TLS itself; relative paths are in the task dir; what
// cannot be honoured is refused with the field named.
func TestPlaceTLS(t *testing.T) {
	llama, _ := engine.Get("llamacpp")
	ollama, _ := engine.Get("ollama")
	tgi, _ := engine.Get("tgi")
	cfg := TaskConfig{TLSCertFile: "secrets/tls.crt", TLSKeyFile: "/abs/tls.key"}

	st := taskState{Config: cfg, TaskDir: "/alloc/task", Engine: "llamacpp"}
	if err := placeTLS(&st, llama); err != nil || st.Spec.TLSCertFile != "/alloc/task/secrets/tls.crt" || st.Spec.TLSKeyFile != "/abs/tls.key" || !st.TLS() {
		t.Fatalf("llamacpp: %v, spec %+v", err, st.Spec)
	}

	relayed := cfg
	relayed.TLSClientCAFile = "secrets/ca.crt"
	st = taskState{Config: relayed, TaskDir: "/alloc/task", Engine: "ollama", Isolation: isolation{Relay: &relaySpec{}}}
	if err := placeTLS(&st, ollama); err != nil || st.Isolation.Relay.TLSCertFile != "/alloc/task/secrets/tls.crt" ||
		st.Isolation.Relay.ClientCAFile != "/alloc/task/secrets/ca.crt" || st.Spec.TLSCertFile != "" {
		t.Fatalf("relayed: %v, relay %+v, spec %+v", err, st.Isolation.Relay, st.Spec)
	}

	for name, c := range map[string]struct {
		st    taskState
		a     engine.Adapter
		field string
	}{
		"engine without TLS, no relay": {taskState{Config: cfg, Engine: "tgi"}, tgi, "tls_cert_file"},
		"client CA without a relay":    {taskState{Config: relayed, Engine: "llamacpp"}, llama, "tls_client_ca_file"},
		"half a pair":                  {taskState{Config: TaskConfig{TLSCertFile: "a"}, Engine: "llamacpp"}, llama, "tls_key_file"},
	} {
		if err := placeTLS(&c.st, c.a); err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: %v, want an error naming %s", name, err, c.field)
		}
	}
	plain := taskState{Engine: "llamacpp"}
	if err := placeTLS(&plain, llama); err != nil || plain.TLS() {
		t.Errorf("no TLS fields: %v", err)
	}
}
