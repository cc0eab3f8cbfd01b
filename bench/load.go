package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var streamBody = []byte(`{"model":"bench","stream":true,"messages":[{"role":"user","content":"hello"}]}`)

var chatBody = []byte(`{"model":"bench","messages":[{"role":"user","content":"hello"}],"max_tokens":8}`)

func newClient(conns int) *http.Client {
	tr := &http.Transport{MaxIdleConns: conns, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, IdleConnTimeout: time.Minute, DisableCompression: true}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

type target struct {
	name  string
	url   string
	token string
	pgid  int    // process group whose CPU is the proxy's cost (0 = none)
	body  []byte // the request sent (nil: chatBody)
}

// payload is the chat request t is sent.
func (t target) payload() []byte {
	if t.body != nil {
		return t.body
	}
	return chatBody
}

type sample struct {
	lat   []time.Duration
	err   int
	n     int
	first string // the first error, to say what the errors were
}

func (s *sample) add(o sample) {
	s.lat = append(s.lat, o.lat...)
	s.err += o.err
	s.n += o.n
	if s.first == "" {
		s.first = o.first
	}
}

// fail counts a failed request, keeping the first error's text.
func (s *sample) fail(err error) {
	s.err++
	if s.first == "" {
		s.first = err.Error()
	}
}

func do(cl *http.Client, t target, body []byte) error {
	req, _ := http.NewRequest("POST", t.url+"/v1/chat/completions", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if t.token != "" {
		req.Header.Set("Authorization", "Bearer "+t.token)
	}
	resp, err := cl.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != 200 {
		return errStatus(resp.StatusCode)
	}
	return err
}

type errStatus int

func (e errStatus) Error() string { return "status " + http.StatusText(int(e)) }

// openLoop sends rate requests/s for d on a fixed schedule, whatever the
// responses do; latency counts from the scheduled send time, so a stalled
// proxy cannot hide its queueing (no coordinated omission).
func openLoop(cl *http.Client, t target, rate int, d time.Duration) sample {
	var mu sync.Mutex
	var s sample
	var wg sync.WaitGroup
	sem := make(chan struct{}, 512)
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	n := int(d / interval)
	for i := 0; i < n; i++ {
		at := start.Add(time.Duration(i) * interval)
		if w := time.Until(at); w > 0 {
			time.Sleep(w)
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			err := do(cl, t, t.payload())
			lat := time.Since(at)
			mu.Lock()
			s.n++
			if err != nil {
				s.fail(err)
			} else {
				s.lat = append(s.lat, lat)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return s
}

// closedLoop runs c workers back to back for d; returns samples and the
// achieved throughput.
func closedLoop(cl *http.Client, t target, c int, d time.Duration) (sample, float64) {
	var mu sync.Mutex
	var s sample
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local sample
			for time.Now().Before(stop) {
				t0 := time.Now()
				err := do(cl, t, t.payload())
				local.n++
				if err != nil {
					local.fail(err)
				} else {
					local.lat = append(local.lat, time.Since(t0))
				}
			}
			mu.Lock()
			s.add(local)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return s, float64(s.n-s.err) / d.Seconds()
}

func pct(l []time.Duration, p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	c := append([]time.Duration(nil), l...)
	sort.Slice(c, func(i, j int) bool { return c[i] < c[j] })
	return c[min(len(c)-1, int(float64(len(c))*p))]
}

type streamResult struct {
	ttfb, gap []time.Duration
	truncated int
	n         int
}

// streams opens c concurrent SSE chat streams and times the first byte and
// the gaps between events; a stream without [DONE] is truncated.
func streams(cl *http.Client, t target, c int) streamResult {
	var mu sync.Mutex
	var r streamResult
	var wg sync.WaitGroup
	body := streamBody
	var started atomic.Int64
	for i := 0; i < c; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			started.Add(1)
			req, _ := http.NewRequestWithContext(context.Background(), "POST", t.url+"/v1/chat/completions", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			if t.token != "" {
				req.Header.Set("Authorization", "Bearer "+t.token)
			}
			t0 := time.Now()
			resp, err := cl.Do(req)
			var ttfb time.Duration
			var gaps []time.Duration
			done := false
			if err == nil {
				br := bufio.NewReader(resp.Body)
				last := time.Time{}
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						break
					}
					if !strings.HasPrefix(line, "data:") {
						continue
					}
					now := time.Now()
					if last.IsZero() {
						ttfb = now.Sub(t0)
					} else {
						gaps = append(gaps, now.Sub(last))
					}
					last = now
					if strings.Contains(line, "[DONE]") {
						done = true
					}
				}
				resp.Body.Close()
			}
			mu.Lock()
			r.n++
			if !done {
				r.truncated++
			} else {
				r.ttfb = append(r.ttfb, ttfb)
				r.gap = append(r.gap, gaps...)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return r
}
