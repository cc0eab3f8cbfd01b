package router

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestConfigDefaultsEnvAndFlags(t *testing.T) {
	c := DefaultConfig()
	if c.Addr != "127.0.0.1:8080" || c.MaxBodyBytes != 4<<20 || c.Retries != 2 || c.EjectAfter != 3 ||
		c.EjectBackoff != 5*time.Second || c.ServiceName != "llorch-engine" {
		t.Fatalf("defaults: %+v", c)
	}
	env := map[string]string{
		"LLORCH_ADDR": "127.0.0.1:9999", "LLORCH_MAX_BODY_BYTES": "1MiB", "LLORCH_RETRIES": "5",
		"LLORCH_AUTH_OPTIONAL": "true", "LLORCH_API_TOKEN": "secret", "LLORCH_CONNECT_TIMEOUT": "750ms",
	}
	if err := c.FromEnv(func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if c.Addr != "127.0.0.1:9999" || c.MaxBodyBytes != 1<<20 || c.Retries != 5 || !c.AuthOptional || c.APIToken != "secret" || c.ConnectTimeout != 750*time.Millisecond {
		t.Fatalf("from env: %+v", c)
	}
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	c.BindFlags(fs)
	if err := fs.Parse([]string{"-addr", "127.0.0.1:7777", "-auth-optional=false", "-retries", "0"}); err != nil {
		t.Fatal(err)
	}
	if c.Addr != "127.0.0.1:7777" || c.AuthOptional || c.Retries != 0 || c.MaxBodyBytes != 1<<20 {
		t.Fatalf("flags must win over env, env over defaults: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestConfigBadValuesNameTheSetting(t *testing.T) {
	for env, val := range map[string]string{
		"LLORCH_RETRIES": "-1", "LLORCH_MAX_BODY_BYTES": "lots", "LLORCH_EJECT_BACKOFF": "5", "LLORCH_METRICS_AUTH": "maybe",
	} {
		c := DefaultConfig()
		err := c.FromEnv(func(k string) string {
			if k == env {
				return val
			}
			return ""
		})
		if err == nil || !strings.Contains(err.Error(), env) {
			t.Errorf("%s=%s: got %v, want an error naming %s", env, val, err, env)
		}
	}
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c := DefaultConfig()
	c.BindFlags(fs)
	if err := fs.Parse([]string{"-idle-stream-timeout", "soon"}); err == nil || !strings.Contains(err.Error(), "idle-stream-timeout") {
		t.Errorf("bad flag: %v", err)
	}
	c = DefaultConfig()
	c.EjectBackoffMax = time.Second
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "eject-backoff-max") {
		t.Errorf("validate: %v", err)
	}
}

// Every option is documented and reachable both ways: the docs generator
// relies on the table being complete.
func TestOptionsTableComplete(t *testing.T) {
	seenFlag, seenEnv := map[string]bool{}, map[string]bool{}
	for _, o := range Options() {
		if o.Flag == "" || o.Env == "" || o.Help == "" || o.set == nil || o.get == nil {
			t.Errorf("incomplete option %+v", o)
		}
		if seenFlag[o.Flag] || seenEnv[o.Env] {
			t.Errorf("duplicate option %s/%s", o.Flag, o.Env)
		}
		seenFlag[o.Flag], seenEnv[o.Env] = true, true
	}
}
