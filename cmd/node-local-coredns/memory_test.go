package main

import "testing"

func TestParseCgroupLimit(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"134217728\n", 134217728},
		{"max\n", 0},                 // v2, no limit
		{"9223372036854771712\n", 0}, // v1, no limit
		{"", 0},
		{"-1", 0},
	} {
		if got := parseCgroupLimit(tc.in); got != tc.want {
			t.Errorf("parseCgroupLimit(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}
