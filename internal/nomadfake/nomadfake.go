// Package nomadfake is a FAKE of Nomad's HTTP API for tests: the job
// list (with meta), job read, scale status, scale and job allocation
// endpoints, in the JSON shapes github.com/hashicorp/nomad/api decodes,
// plus ACL checks against the capabilities a shipped policy grants. It
// exists because CI has no Nomad agent (building one takes minutes of a
// shared machine); it is not Nomad: no scheduler, no evaluations, one
// region. Code under test talks to it through the real nomad/api client.
package nomadfake

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	nomad "github.com/hashicorp/nomad/api"
)

// Scale is one accepted scale request.
type Scale struct {
	Job, Group string
	From, To   int
	Message    string
	Meta       map[string]any
	At         time.Time
}

// Server is the fake agent.
type Server struct {
	URL string
	// OnScale runs (outside the lock) after a count change is accepted:
	// tests start or stop "allocations" (engines) here.
	OnScale func(s Scale)

	mu     sync.Mutex
	jobs   map[string]*nomad.Job // by namespace/id
	index  uint64
	scales []Scale
	reqs   map[string]int // by "METHOD path-pattern"
	acl    map[string]map[string]bool
}

// Start serves the fake until the test ends.
func Start(t testing.TB) *Server {
	s := &Server{jobs: map[string]*nomad.Job{}, reqs: map[string]int{}, index: 10}
	hs := httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(hs.Close)
	s.URL = hs.URL
	return s
}

// Client is a nomad/api client for the fake.
func (s *Server) Client(t testing.TB, token, namespace string) *nomad.Client {
	t.Helper()
	cfg := nomad.DefaultConfig()
	cfg.Address, cfg.SecretID, cfg.Namespace = s.URL, token, namespace
	c, err := nomad.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// AddJob registers a job (as `nomad job run` would).
func (s *Server) AddJob(j *nomad.Job) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.index++
	ns := "default"
	if j.Namespace != nil && *j.Namespace != "" {
		ns = *j.Namespace
	}
	j.Namespace = &ns
	j.ModifyIndex = ptr(s.index)
	j.CreateIndex = ptr(s.index)
	j.Status = ptr(jobStatus(j))
	s.jobs[ns+"/"+*j.ID] = j
}

// jobStatus is what Nomad reports for a service job: "dead" once no group
// has a count (a pool scaled to zero, as a real 1.6 agent shows it), else
// "running".
func jobStatus(j *nomad.Job) string {
	for _, tg := range j.TaskGroups {
		if tg.Count != nil && *tg.Count > 0 {
			return "running"
		}
	}
	return "dead"
}

// Grant makes token hold the capabilities of an HCL Nomad ACL policy's
// namespace blocks (namespace "x" { capabilities = [...] }). Once any
// token is granted, requests without a granted capability get 403.
func (s *Server) Grant(token, policyHCL string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.acl == nil {
		s.acl = map[string]map[string]bool{}
	}
	caps := map[string]bool{}
	for _, m := range nsBlockRE.FindAllStringSubmatch(policyHCL, -1) {
		for _, c := range capRE.FindAllStringSubmatch(m[2], -1) {
			caps[m[1]+"/"+c[1]] = true
		}
	}
	s.acl[token] = caps
}

var (
	nsBlockRE = regexp.MustCompile(`(?s)namespace\s+"([^"]+)"\s*\{[^}]*capabilities\s*=\s*\[([^\]]*)\]`)
	capRE     = regexp.MustCompile(`"([a-z-]+)"`)
)

// Scales lists the accepted scale requests, oldest first.
func (s *Server) Scales() []Scale {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.scales)
}

// Count is a job's engine group count.
func (s *Server) Count(ns, job string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if j := s.jobs[ns+"/"+job]; j != nil && len(j.TaskGroups) > 0 {
		return *j.TaskGroups[0].Count
	}
	return -1
}

// Requests is how many requests matched a route ("GET /v1/jobs", "PUT scale", ...).
func (s *Server) Requests(route string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reqs[route]
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	ns := r.URL.Query().Get("namespace")
	if ns == "" {
		ns = "default"
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	route, need := "", ""
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/v1/jobs":
		route, need = "GET /v1/jobs", "list-jobs"
	case len(parts) == 3 && parts[1] == "job" && r.Method == http.MethodGet:
		route, need = "GET job", "read-job"
	case len(parts) == 4 && parts[1] == "job" && parts[3] == "scale" && r.Method == http.MethodGet:
		route, need = "GET scale", "read-job"
	case len(parts) == 4 && parts[1] == "job" && parts[3] == "scale" && (r.Method == http.MethodPut || r.Method == http.MethodPost):
		route, need = "PUT scale", "scale-job"
	case len(parts) == 4 && parts[1] == "job" && parts[3] == "allocations" && r.Method == http.MethodGet:
		route, need = "GET allocations", "read-job"
	default:
		http.Error(w, "nomadfake: no such endpoint "+r.Method+" "+r.URL.Path, http.StatusNotFound)
		return
	}
	s.mu.Lock()
	s.reqs[route]++
	if s.acl != nil && !s.acl[r.Header.Get("X-Nomad-Token")][ns+"/"+need] {
		s.mu.Unlock()
		http.Error(w, "Permission denied", http.StatusForbidden)
		return
	}
	var job *nomad.Job
	if len(parts) >= 3 {
		if job = s.jobs[ns+"/"+parts[2]]; job == nil {
			s.mu.Unlock()
			http.Error(w, "job not found", http.StatusNotFound)
			return
		}
	}
	w.Header().Set("X-Nomad-Index", strconv.FormatUint(s.index, 10))
	w.Header().Set("X-Nomad-KnownLeader", "true")
	var out any
	var fire *Scale
	switch route {
	case "GET /v1/jobs":
		withMeta := r.URL.Query().Get("meta") == "true"
		list := []*nomad.JobListStub{}
		for k, j := range s.jobs {
			if !strings.HasPrefix(k, ns+"/") || !strings.HasPrefix(*j.ID, r.URL.Query().Get("prefix")) {
				continue
			}
			st := &nomad.JobListStub{ID: *j.ID, Name: *j.Name, Namespace: *j.Namespace, Type: *j.Type, Status: *j.Status,
				ModifyIndex: *j.ModifyIndex, JobModifyIndex: *j.ModifyIndex}
			if withMeta {
				st.Meta = j.Meta
			}
			list = append(list, st)
		}
		slices.SortFunc(list, func(a, b *nomad.JobListStub) int { return strings.Compare(a.ID, b.ID) })
		out = list
	case "GET job":
		out = job
	case "GET scale":
		st := nomad.JobScaleStatusResponse{JobID: *job.ID, Namespace: ns, JobModifyIndex: *job.ModifyIndex, TaskGroups: map[string]nomad.TaskGroupScaleStatus{}}
		for _, tg := range job.TaskGroups {
			st.TaskGroups[*tg.Name] = nomad.TaskGroupScaleStatus{Desired: *tg.Count, Placed: *tg.Count, Running: *tg.Count, Healthy: *tg.Count}
		}
		out = st
	case "GET allocations":
		allocs := []*nomad.AllocationListStub{}
		for _, tg := range job.TaskGroups {
			for i := 0; i < *tg.Count; i++ {
				allocs = append(allocs, &nomad.AllocationListStub{ID: fmt.Sprintf("%s-%s-%d-0000-000000000000", *job.ID, *tg.Name, i),
					JobID: *job.ID, TaskGroup: *tg.Name, DesiredStatus: "run", ClientStatus: "running", NodeName: "fake"})
			}
		}
		out = allocs
	case "PUT scale":
		var req nomad.ScalingRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Count == nil {
			s.mu.Unlock()
			http.Error(w, "bad scale request", http.StatusBadRequest)
			return
		}
		var tg *nomad.TaskGroup
		for _, g := range job.TaskGroups {
			if *g.Name == req.Target["Group"] {
				tg = g
			}
		}
		// As Nomad: an unknown group, a count outside the scaling block's
		// range and a stale JobModifyIndex are refused.
		switch {
		case tg == nil:
			s.mu.Unlock()
			http.Error(w, "task group not found", http.StatusBadRequest)
			return
		case tg.Scaling != nil && (*req.Count < *tg.Scaling.Min || *req.Count > *tg.Scaling.Max):
			s.mu.Unlock()
			http.Error(w, fmt.Sprintf("group count was greater than scaling policy maximum: %d > %d", *req.Count, *tg.Scaling.Max), http.StatusBadRequest)
			return
		case req.JobModifyIndex != 0 && req.JobModifyIndex != *job.ModifyIndex:
			s.mu.Unlock()
			http.Error(w, fmt.Sprintf("job modify index %d does not match current index %d", req.JobModifyIndex, *job.ModifyIndex), http.StatusBadRequest)
			return
		}
		from := *tg.Count
		tg.Count = ptr(int(*req.Count))
		job.Status = ptr(jobStatus(job))
		s.index++
		job.ModifyIndex = ptr(s.index)
		sc := Scale{Job: *job.ID, Group: *tg.Name, From: from, To: *tg.Count, Message: req.Message, Meta: req.Meta, At: time.Now()}
		s.scales = append(s.scales, sc)
		fire = &sc
		out = nomad.JobRegisterResponse{EvalID: fmt.Sprintf("eval-%d", s.index), JobModifyIndex: s.index}
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
	if fire != nil && s.OnScale != nil && fire.From != fire.To {
		s.OnScale(*fire)
	}
}

func ptr[T any](v T) *T { return &v }
