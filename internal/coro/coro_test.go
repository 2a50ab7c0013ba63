package coro

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waiter is a Waiter that hands the armed coroutine to the test.
type waiter struct{ armed chan *Co }

func newWaiter() *waiter { return &waiter{armed: make(chan *Co, 8)} }

func (w *waiter) Arm(c *Co) { w.armed <- c }

// counted is a pool whose coroutines are counted against max.
type counted struct {
	n   atomic.Int32
	max int32
}

func (c *counted) grow() bool {
	if c.n.Add(1) <= c.max {
		return true
	}
	c.n.Add(-1)
	return false
}

func (c *counted) shrink() { c.n.Add(-1) }

// TestParkResume: a job runs in Start's caller until it parks, Start
// returns, and the goroutine that resumes it runs the rest; done, the
// coroutine is reused for the next job.
func TestParkResume(t *testing.T) {
	var (
		mu    sync.Mutex
		trace []string
	)
	log := func(s string) {
		mu.Lock()
		defer mu.Unlock()
		trace = append(trace, s)
	}
	w := newWaiter()
	seen := map[*Co]bool{}
	var n counted
	n.max = 4
	p := NewPool(func(c *Co, job string) {
		seen[c] = true
		log(job + ": before")
		c.Park(w)
		log(job + ": after")
	}, n.grow, n.shrink)
	for _, job := range []string{"a", "b"} {
		if !p.Start(job) {
			t.Fatalf("%s: not started", job)
		}
		log(job + ": started")
		select {
		case c := <-w.armed:
			done := make(chan struct{})
			go func() { c.Resume(); close(done) }()
			<-done
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: never armed", job)
		}
	}
	want := []string{"a: before", "a: started", "a: after", "b: before", "b: started", "b: after"}
	if len(trace) != len(want) {
		t.Fatalf("trace %v, want %v", trace, want)
	}
	for i := range want {
		if trace[i] != want[i] {
			t.Fatalf("trace %v, want %v", trace, want)
		}
	}
	if len(seen) != 1 || n.n.Load() != 1 {
		t.Errorf("%d coroutines made (%d counted), want one, reused", len(seen), n.n.Load())
	}
}

// TestDetach: a job that detaches goes on in a goroutine of its own, so
// that Start returns while it blocks; resumed by a goroutine that may
// block, Detach changes nothing.
func TestDetach(t *testing.T) {
	release := make(chan struct{})
	finished := make(chan struct{}, 2)
	w := newWaiter()
	var n counted
	n.max = 4
	p := NewPool(func(c *Co, job string) {
		if job == "park first" {
			c.Park(w)
		}
		c.Detach()
		<-release
		finished <- struct{}{}
	}, n.grow, n.shrink)

	started := make(chan bool)
	go func() { started <- p.Start("detach") }()
	select {
	case ok := <-started:
		if !ok {
			t.Fatal("not started")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Start blocked with its job")
	}

	if !p.Start("park first") {
		t.Fatal("not started")
	}
	c := <-w.armed
	resumed := make(chan struct{})
	go func() { c.Resume(); close(resumed) }()
	select {
	case <-resumed:
		t.Fatal("Resume returned before the job was done: Detach detached a coroutine its resumer may block")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-finished
	<-finished
	<-resumed
}

// TestBound: Start reports false when every coroutine the bound allows is
// busy, and true again once one is done.
func TestBound(t *testing.T) {
	w := newWaiter()
	var n counted
	n.max = 2
	p := NewPool(func(c *Co, _ int) { c.Park(w) }, n.grow, n.shrink)
	for i := range 2 {
		if !p.Start(i) {
			t.Fatalf("job %d not started", i)
		}
	}
	if p.Start(2) {
		t.Fatal("a third job started with two coroutines allowed")
	}
	(<-w.armed).Resume()
	if !p.Start(3) {
		t.Fatal("no job started with a coroutine idle")
	}
	(<-w.armed).Resume()
	(<-w.armed).Resume()
}

// TestClose: Close ends the idle coroutines at once and a busy one when
// its job is done, and no job starts after it.
func TestClose(t *testing.T) {
	w := newWaiter()
	var n counted
	n.max = 4
	p := NewPool(func(c *Co, park bool) {
		if park {
			c.Park(w)
		}
	}, n.grow, n.shrink)
	p.Start(true)
	p.Start(false)
	if got := n.n.Load(); got != 2 {
		t.Fatalf("%d coroutines, want 2", got)
	}
	p.Close()
	if got := n.n.Load(); got != 1 {
		t.Errorf("after Close, %d coroutines, want the busy one", got)
	}
	if p.Start(false) {
		t.Error("a job started after Close")
	}
	(<-w.armed).Resume()
	if got := n.n.Load(); got != 0 {
		t.Errorf("%d coroutines once the busy one is done, want 0", got)
	}
}

func TestContext(t *testing.T) {
	ctx := context.Background()
	if FromContext(ctx) != nil {
		t.Fatal("a coroutine in an empty context")
	}
	c := &Co{}
	ctx = NewContext(ctx, c)
	if FromContext(ctx) != c {
		t.Fatal("NewContext's coroutine not found")
	}
	if FromContext(NewContext(ctx, nil)) != nil {
		t.Fatal("a coroutine hidden by NewContext(ctx, nil) still found")
	}
}
