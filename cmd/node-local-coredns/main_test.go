package main

import (
	"log/slog"
	"strings"
	"testing"
)

func TestRunExitCodesAndOutput(t *testing.T) {
	noEnv := func(string) string { return "" }
	for _, tc := range []struct {
		name       string
		args       []string
		code       int
		wantStdout string
		wantStderr string
	}{
		{name: "version", args: []string{"--version"}, code: 0, wantStdout: "node-local-coredns "},
		{name: "plugins", args: []string{"--plugins"}, code: 0, wantStdout: "forward\n"},
		{name: "help", args: []string{"--help"}, code: 0, wantStderr: "-local-ip"},
		{name: "no ClusterIP", args: nil, code: 2, wantStderr: "node-local-coredns: --local-ip: no local IP: the kube-dns ClusterIP is not known (set --local-ip or $KUBE_DNS_SERVICE_HOST)\n"},
		{name: "bad flag", args: []string{"--port=x"}, code: 2, wantStderr: "node-local-coredns: invalid value \"x\" for flag -port"},
		{name: "a flag value named like a command", args: []string{"--interface", "version"}, code: 2, wantStderr: "--local-ip"},
		{name: "watchdog bad flag", args: []string{"watchdog", "--silence=x"}, code: 2, wantStderr: "node-local-coredns watchdog: invalid value"},
		{name: "status help", args: []string{"status", "--help"}, code: 0, wantStderr: "exit code 0 only if"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			if code := run(tc.args, noEnv, &stdout, &stderr); code != tc.code {
				t.Errorf("exit code %d, want %d (stderr %q)", code, tc.code, stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.wantStdout) {
				t.Errorf("stdout %q lacks %q", stdout.String(), tc.wantStdout)
			}
			if !strings.Contains(stderr.String(), tc.wantStderr) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tc.wantStderr)
			}
			if tc.code == 2 && strings.Count(stderr.String(), "\n") != 1 {
				t.Errorf("a bad configuration must be one line, got %q", stderr.String())
			}
		})
	}
}

// TestWarnDeprecated: --iptables-mode, in any of the flag package's forms,
// gets one warning naming --netfilter; nothing else does.
func TestWarnDeprecated(t *testing.T) {
	for _, tc := range []struct {
		args []string
		warn bool
	}{
		{[]string{"--iptables-mode=nft"}, true},
		{[]string{"-iptables-mode", "legacy"}, true},
		{[]string{"--netfilter=nftables", "--iptables-mode=auto", "--iptables-mode=auto"}, true},
		{[]string{"--netfilter=iptables-nft"}, false},
		{[]string{"--corefile=iptables-mode"}, false},
	} {
		var b strings.Builder
		warnDeprecated(tc.args, slog.New(slog.NewTextHandler(&b, nil)))
		got := b.String()
		if n := strings.Count(got, "--iptables-mode is deprecated: use --netfilter"); (n == 1) != tc.warn || n > 1 {
			t.Errorf("%q: logged %q, want a warning: %v", tc.args, got, tc.warn)
		}
	}
}
