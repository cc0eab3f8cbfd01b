package e2e

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/llorch/llorch/router/keys"
)

// writeKeys makes the run's per-team key: its secret stays in memory (and
// must stay out of every log), the router's keys file holds its digest.
func (c *cluster) writeKeys() {
	s, err := keys.NewSecret()
	if err != nil {
		c.t.Fatal(err)
	}
	c.keySecret = s
	c.keysFile = filepath.Join(c.dir, "keys.yaml")
	err = keys.WriteFile(c.keysFile, keys.File{Keys: []keys.Key{{Name: "e2e-team", Digest: keys.DigestOf(s), Models: []string{"tiny"}, RPM: 600}}})
	if err != nil {
		c.t.Fatal(err)
	}
}

// useKey sends a chat with the per-team key (answered) and one for a model
// outside its allow-list (403), so the router has logged both with the key
// at hand before the scan.
func (c *cluster) useKey() error {
	for _, tc := range []struct {
		model string
		want  int
	}{{"tiny", 200}, {"not-allowed", 403}} {
		r, _ := http.NewRequest("POST", c.routerURL()+"/v1/chat/completions",
			bytes.NewReader([]byte(`{"model":"`+tc.model+`","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}`)))
		r.Header.Set("Authorization", "Bearer "+c.keySecret)
		r.Header.Set("Content-Type", "application/json")
		resp, err := c.http.Do(r)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			return fmt.Errorf("key request for %s: status %d, want %d", tc.model, resp.StatusCode, tc.want)
		}
	}
	return nil
}

// scanLeaks reads every log the run produced (router, drivers, Consul
// agents, engines, task supervisors) and reports files holding a raw token
// (or, in the TLS variant, a private key).
func (c *cluster) scanLeaks() []string {
	secrets := []string{c.apiToken, c.engineToken, c.driverToken, c.routerToken, c.mgmt, c.keySecret}
	for _, tok := range c.agentTokens {
		secrets = append(secrets, tok)
	}
	if c.tls != nil {
		secrets = append(secrets, c.tls.privateKeys()...)
	}
	var leaks []string
	c.scanned = 0
	check := func(name, content string) {
		c.scanned++
		for _, s := range secrets {
			if s != "" && strings.Contains(content, s) {
				leaks = append(leaks, name)
			}
		}
	}
	c.mu.Lock()
	files := append([]string(nil), c.logs...)
	plugins := c.plugins
	c.mu.Unlock()
	for _, f := range files {
		filepath.WalkDir(f, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			// Token and key files are secrets by design; everything else is a log.
			if strings.HasSuffix(p, ".token") || strings.HasSuffix(p, ".key") || strings.Contains(p, "/secrets/") {
				return nil
			}
			b, _ := os.ReadFile(p)
			check(p, string(b))
			return nil
		})
	}
	for h, p := range plugins {
		check("plugin "+h, p.Logs())
	}
	return leaks
}
