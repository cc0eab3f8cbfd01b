package jobs

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	nomad "github.com/hashicorp/nomad/api"
)

// CodeModelNotAvailable is the error code for a model that no node holds.
const CodeModelNotAvailable = "MODEL_NOT_AVAILABLE"

// ErrModelNotAvailable: no ready node with the llorch driver lists the model
// in its catalog.
var ErrModelNotAvailable = errors.New(CodeModelNotAvailable)

// Client submits pools to a Nomad agent.
type Client struct{ api *nomad.Client }

// NewClient uses Nomad's usual environment (NOMAD_ADDR, NOMAD_TOKEN,
// NOMAD_CACERT, ...), as the nomad CLI does.
func NewClient() (*Client, error) {
	c, err := nomad.NewClient(nomad.DefaultConfig())
	if err != nil {
		return nil, fmt.Errorf("nomad client: %w", err)
	}
	return &Client{api: c}, nil
}

// NodesWithModel lists the ready nodes whose llorch catalog holds the model.
func (c *Client) NodesWithModel(ctx context.Context, model string) ([]string, error) {
	q := (&nomad.QueryOptions{}).WithContext(ctx)
	stubs, _, err := c.api.Nodes().List(q)
	if err != nil {
		return nil, fmt.Errorf("list nomad nodes: %w", err)
	}
	var out []string
	for _, st := range stubs {
		if st.Status != "ready" {
			continue
		}
		n, _, err := c.api.Nodes().Info(st.ID, q)
		if err != nil {
			return nil, fmt.Errorf("read nomad node %s: %w", st.ID, err)
		}
		if n.Attributes["driver.llorch"] == "" {
			continue
		}
		for _, m := range strings.Split(n.Attributes["driver.llorch.models"], ",") {
			if m == model {
				out = append(out, n.Name)
				break
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// Run checks that some node holds the model (unless the spec opts out),
// then registers the job. It fails early with ErrModelNotAvailable rather
// than leaving a job that can never place.
func (c *Client) Run(ctx context.Context, s PoolSpec) (*nomad.JobRegisterResponse, error) {
	if *s.RequireModelPresent {
		nodes, err := c.NodesWithModel(ctx, s.ModelName)
		if err != nil {
			return nil, err
		}
		if len(nodes) == 0 {
			return nil, fmt.Errorf("%w: no ready node with the llorch driver holds model %q (stage it in the driver's model_dir; see docs/models.md)", ErrModelNotAvailable, s.ModelName)
		}
	}
	resp, _, err := c.api.Jobs().Register(Render(s), (&nomad.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("register job %s: %w", s.Name, err)
	}
	return resp, nil
}

// Status is a pool's job and allocations.
type Status struct {
	Job    *nomad.Job
	Allocs []*nomad.AllocationListStub
}

// Status reads the job and its allocations.
func (c *Client) Status(ctx context.Context, name string) (Status, error) {
	q := (&nomad.QueryOptions{}).WithContext(ctx)
	job, _, err := c.api.Jobs().Info(name, q)
	if err != nil {
		return Status{}, fmt.Errorf("read job %s: %w", name, err)
	}
	allocs, _, err := c.api.Jobs().Allocations(name, false, q)
	if err != nil {
		return Status{}, fmt.Errorf("read allocations of %s: %w", name, err)
	}
	return Status{Job: job, Allocs: allocs}, nil
}

// Stop deregisters the job (purge removes it from Nomad's history too).
func (c *Client) Stop(ctx context.Context, name string, purge bool) (string, error) {
	evalID, _, err := c.api.Jobs().Deregister(name, purge, (&nomad.WriteOptions{}).WithContext(ctx))
	if err != nil {
		return "", fmt.Errorf("stop job %s: %w", name, err)
	}
	return evalID, nil
}
