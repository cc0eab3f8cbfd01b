package driver

import (
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/llorch/llorch/internal/nomadpb/drivers"
	"github.com/llorch/llorch/internal/procfs"
)

// clockTicks is USER_HZ, 100 on every Linux Nomad runs on.
const clockTicks = 100

// statsSampler turns cumulative /proc CPU ticks into percentages between
// two samples.
type statsSampler struct {
	mhz  float64
	prev map[int]cpuSample
}

type cpuSample struct {
	start     uint64
	user, sys uint64
	at        time.Time
}

func newStatsSampler() *statsSampler {
	return &statsSampler{mhz: procfs.CPUMHz(), prev: map[int]cpuSample{}}
}

// sample measures the engine's whole process tree.
func (s *statsSampler) sample(rootPID int) *drivers.TaskStats {
	now := time.Now()
	page := uint64(os.Getpagesize())
	byPid := map[string]*drivers.TaskResourceUsage{}
	var aggUser, aggSys, aggRSS, aggSwap float64
	next := map[int]cpuSample{}
	for _, p := range procfs.Tree(rootPID) {
		cur := cpuSample{start: p.StartTime, user: p.UTime, sys: p.STime, at: now}
		next[p.PID] = cur
		var userPct, sysPct float64
		if prev, ok := s.prev[p.PID]; ok && prev.start == cur.start {
			if dt := now.Sub(prev.at).Seconds(); dt > 0 {
				userPct = float64(cur.user-prev.user) / clockTicks / dt * 100
				sysPct = float64(cur.sys-prev.sys) / clockTicks / dt * 100
			}
		}
		rss := uint64(p.RSSPages) * page
		swap := procfs.SwapBytes(p.PID)
		byPid[strconv.Itoa(p.PID)] = s.usage(userPct, sysPct, rss, swap)
		aggUser += userPct
		aggSys += sysPct
		aggRSS += float64(rss)
		aggSwap += float64(swap)
	}
	s.prev = next
	return &drivers.TaskStats{
		Timestamp:          timestamppb.New(now),
		AggResourceUsage:   s.usage(aggUser, aggSys, uint64(aggRSS), uint64(aggSwap)),
		ResourceUsageByPid: byPid,
	}
}

func (s *statsSampler) usage(userPct, sysPct float64, rss, swap uint64) *drivers.TaskResourceUsage {
	pct := userPct + sysPct
	cpu := &drivers.CPUUsage{
		UserMode: userPct, SystemMode: sysPct, Percent: pct,
		MeasuredFields: []drivers.CPUUsage_Fields{drivers.CPUUsage_USER_MODE, drivers.CPUUsage_SYSTEM_MODE, drivers.CPUUsage_PERCENT},
	}
	if s.mhz > 0 {
		// Nomad accounts CPU in MHz: the share of one core times its clock.
		cpu.TotalTicks = pct / 100 * s.mhz
		cpu.MeasuredFields = append(cpu.MeasuredFields, drivers.CPUUsage_TOTAL_TICKS)
	}
	return &drivers.TaskResourceUsage{
		Cpu: cpu,
		Memory: &drivers.MemoryUsage{
			Rss: rss, Swap: swap,
			MeasuredFields: []drivers.MemoryUsage_Fields{drivers.MemoryUsage_RSS, drivers.MemoryUsage_SWAP},
		},
	}
}

// TaskStats sends a sample at once and every collection_interval until the
// task exits or the agent closes the stream. Timestamp and aggregate usage
// are always set.
func (d *Driver) TaskStats(req *drivers.TaskStatsRequest, stream drivers.Driver_TaskStatsServer) error {
	h := d.tasks.get(req.GetTaskId())
	if h == nil {
		return status.Errorf(codes.NotFound, "task stats %s: unknown task", req.GetTaskId())
	}
	interval := req.GetCollectionInterval().AsDuration()
	if interval <= 0 {
		interval = time.Second
	}
	s := newStatsSampler()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if h.isExited() {
			return nil
		}
		if err := stream.Send(&drivers.TaskStatsResponse{Stats: s.sample(h.st.EnginePID.PID)}); err != nil {
			return err
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-d.ctx.Done():
			return nil
		case <-h.exited:
			return nil
		case <-t.C:
		}
	}
}
