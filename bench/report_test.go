package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
)

func TestMedian(t *testing.T) {
	nan := math.NaN()
	for _, tc := range []struct {
		name        string
		in          []float64
		med, lo, hi float64
	}{
		{"none", nil, 0, 0, 0},
		{"one", []float64{3}, 3, 3, 3},
		{"odd count", []float64{5, 1, 3}, 3, 1, 5},
		{"even count: mean of the middle two", []float64{4, 1, 2, 10}, 3, 1, 10},
		{"NaN left out", []float64{nan, 2, nan, 6}, 4, 2, 6},
		{"only NaN", []float64{nan}, 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			med, lo, hi := median(tc.in)
			if med != tc.med || lo != tc.lo || hi != tc.hi {
				t.Errorf("median(%v) = %v, %v, %v; want %v, %v, %v", tc.in, med, lo, hi, tc.med, tc.lo, tc.hi)
			}
		})
	}
}

func TestRatio(t *testing.T) {
	nan := math.NaN()
	r := newResults()
	// Paired: rounds where the VM ran fast, then slow. a is 0.8 of b in
	// every round; the ratio of the medians would say 1.6.
	for _, v := range [][2]float64{{8, 10}, {8, 10}, {32, 40}, {32, 40}, {32, 40}} {
		r.add("a", "paired", v[0])
		r.add("b", "paired", v[1])
	}
	r.paired["paired"] = true
	for _, v := range [][2]float64{{8, 10}, {8, 10}, {32, 40}, {32, 40}, {32, 40}} {
		r.add("a", "unpaired", v[0])
		r.add("b", "unpaired", v[1])
	}
	// A round where b answered nothing (NaN) is left out, not misaligned.
	for _, v := range [][2]float64{{1, 2}, {5, nan}, {3, 6}} {
		r.add("a", "gap", v[0])
		r.add("b", "gap", v[1])
	}
	r.paired["gap"] = true
	for _, tc := range []struct {
		key  string
		want float64
	}{
		{"paired", 0.8},
		{"unpaired", 32.0 / 40},
		{"gap", 0.5},
		{"missing", 0},
	} {
		if got := r.ratio(tc.key, "a", "b"); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("ratio(%s) = %v, want %v", tc.key, got, tc.want)
		}
	}
	r2 := newResults()
	for _, v := range [][2]float64{{8, 10}, {8, 10}, {32, 10}} {
		r2.add("a", "k", v[0])
		r2.add("b", "k", v[1])
	}
	if got := r2.ratio("k", "a", "b"); got != 0.8 {
		t.Errorf("unpaired ratio = %v, want the ratio of the medians, 0.8", got)
	}
	r2.paired["k"] = true
	if got := r2.ratio("k", "a", "b"); got != 0.8 {
		t.Errorf("paired ratio = %v, want the median of 0.8, 0.8, 3.2: 0.8", got)
	}
}

func TestBenchCorefileRaisesTheCap(t *testing.T) {
	text, err := benchCorefile()
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(text, "success {{ .SuccessCapacity }} 3600\n"); n != 2 {
		t.Errorf("%d success lines capped at 3600 s, want both of the caching server blocks'", n)
	}
	if strings.Contains(text, "success {{ .SuccessCapacity }} 30\n") {
		t.Error("a success line still caps at 30 s")
	}
}

func TestRoundsTable(t *testing.T) {
	r := newResults()
	r.add("a", "k", 8)
	r.add("b", "k", 10)
	r.add("a", "k", 3)
	r.add("b", "k", math.NaN())
	r.paired["k"] = true
	r.add("a", "unpaired", 1) // not written round by round
	r.add("a", "left out", 1)
	r.paired["left out"] = true // not kept
	var lines []string
	w := func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) }
	r.rounds(w, []*server{{name: "a"}, {name: "b"}}, func(k string) bool { return k != "left out" })
	want := []string{
		"### k, round by round",
		"",
		"| round | a | b | ratio to b |",
		"|---|---|---|---|",
		"| 1 | 8.00 | 10.0 | 0.80 |",
		"| 2 | 3.00 | – | – |",
		"",
	}
	if !slices.Equal(lines, want) {
		t.Errorf("rounds wrote\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}

// TestTableDashes: a server with no value of a figure (none, or only NaN:
// not measured for it) gets a dash, and no ratio.
func TestTableDashes(t *testing.T) {
	r := newResults()
	r.add("a", "k", 4)
	r.add("b", "k", math.NaN())
	r.add("a", "j", 1)
	var lines []string
	w := func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) }
	r.table(w, []*server{{name: "a"}, {name: "b"}, {name: "c"}}, func(string) bool { return true })
	want := []string{
		"| figure | a | b | c | ratio to b | ratio to c |",
		"|---|---|---|---|---|---|",
		"| k | 4.00 (4.00–4.00) | – | – | – | – |",
		"| j | 1.00 (1.00–1.00) | – | – | – | – |",
	}
	if !slices.Equal(lines, want) {
		t.Errorf("table wrote\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}
