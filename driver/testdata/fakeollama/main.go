// fakeollama stands in for `ollama serve` in the driver's relay test: it
// listens where OLLAMA_HOST says, as Ollama does, and answers every request
// with its own listen address and the Authorization header it received, so
// the test can see where the engine was bound and what the relay forwarded.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
)

func main() {
	host := os.Getenv("OLLAMA_HOST")
	if len(os.Args) < 2 || os.Args[1] != "serve" || host == "" {
		fmt.Fprintln(os.Stderr, "usage: OLLAMA_HOST=host:port fakeollama serve")
		os.Exit(2)
	}
	fmt.Println("fake ollama listening on", host)
	err := http.ListenAndServe(host, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"version": "0.0.0-fake", "listen": host, "authorization": r.Header.Get("Authorization"), "models": []any{},
		})
	}))
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
