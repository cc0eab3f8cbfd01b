package e2e

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// scanLeaks reads every log the run produced (router, drivers, Consul
// agents, engines, task supervisors) and reports files holding a raw token.
func (c *cluster) scanLeaks() []string {
	secrets := []string{c.apiToken, c.engineToken, c.driverToken, c.routerToken, c.mgmt}
	for _, tok := range c.agentTokens {
		secrets = append(secrets, tok)
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
			// Token files are secrets by design; everything else is a log.
			if strings.HasSuffix(p, ".token") || strings.Contains(p, "/secrets/") {
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
