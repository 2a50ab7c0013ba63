package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// perf is what one dnsperf run reports.
type perf struct {
	sent, completed, lost float64
	qps                   float64
	latencies             []time.Duration // with verbose
}

// dnsperf runs dnsperf pinned to CPU 1 against port. rate 0 is as fast as
// it can; limit bounds the run in seconds; runs bounds passes over the file
// (0: until limit).
func dnsperf(ctx context.Context, port int, file string, rate int, limit time.Duration, runs int, verbose bool) (perf, error) {
	// -t 1: a query unanswered after 1 s is lost, and a run ends at most
	// 1 s after its time limit.
	args := []string{"-c", "1", "dnsperf", "-s", "127.0.0.1", "-p", strconv.Itoa(port), "-d", file, "-c", "8", "-q", "1000",
		"-t", "1", "-l", fmt.Sprintf("%.1f", limit.Seconds())}
	if rate > 0 {
		args = append(args, "-Q", strconv.Itoa(rate))
	}
	if runs > 0 {
		args = append(args, "-n", strconv.Itoa(runs))
	}
	if verbose {
		args = append(args, "-v")
	}
	ctx, cancel := context.WithTimeout(ctx, limit+30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "taskset", args...).Output()
	if err != nil {
		return perf{}, fmt.Errorf("dnsperf: %w", err)
	}
	var p perf
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		field := func(prefix string) (float64, bool) {
			v, ok := strings.CutPrefix(l, prefix)
			if !ok {
				return 0, false
			}
			f, err := strconv.ParseFloat(strings.Fields(v)[0], 64)
			return f, err == nil
		}
		if v, ok := field("Queries sent:"); ok {
			p.sent = v
		}
		if v, ok := field("Queries completed:"); ok {
			p.completed = v
		}
		if v, ok := field("Queries lost:"); ok {
			p.lost = v
		}
		if v, ok := field("Queries per second:"); ok {
			p.qps = v
		}
		if verbose && strings.HasPrefix(l, "> ") {
			f := strings.Fields(l)
			if sec, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil {
				p.latencies = append(p.latencies, time.Duration(sec*float64(time.Second)))
			}
		}
	}
	slices.Sort(p.latencies)
	return p, nil
}

func (p perf) lossRatio() float64 {
	if p.sent == 0 {
		return 1
	}
	return p.lost / p.sent
}

func (p perf) percentile(q float64) time.Duration {
	if len(p.latencies) == 0 {
		return 0
	}
	return p.latencies[int(float64(len(p.latencies)-1)*q/100)]
}
