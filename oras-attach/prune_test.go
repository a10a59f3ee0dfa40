package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/attested-kv/attested-kv/internal/token"
)

// TestTokenPrune: token prune removes the stored tokens older than --older-than, which it
// requires and refuses under 1h, from the store of --token-dir, ATTEST_TOKEN_DIR or the default,
// each listed with the repositories attach published it to (an empty mark: published, repository
// not recorded); --dry-run only lists them; -o json prints what it removed; entries not the
// store's are named on stderr and left.
func TestTokenPrune(t *testing.T) {
	state := t.TempDir()
	t.Setenv("XDG_STATE_HOME", state) // no case may prune this user's own store
	t.Setenv("ATTEST_TOKEN_DIR", "")
	subjectA := "sha256:" + strings.Repeat("a", 64)
	subjectB := "sha256:" + strings.Repeat("b", 64)
	now := time.Now()
	tokens := []struct {
		subject, raw string
		age          time.Duration
		repos        []string // the repositories attach published it to
	}{
		{subjectA, "h.a-recent.sig", 10 * time.Minute, []string{"rega.example/app"}},
		{subjectA, "h.a-old.sig", 48 * time.Hour, []string{"rega.example/app"}},
		// Attached to regA, then to the copy in regB.
		{subjectB, "h.b-older.sig", 72 * time.Hour, []string{"rega.example/app", "regb.example/app"}},
	}
	all := []string{"h.a-old.sig", "h.a-recent.sig", "h.b-older.sig"}
	// prefix is the start of the token's SHA-256 that the text output prints.
	prefix := func(raw string) string { s := sha256.Sum256([]byte(raw)); return hex.EncodeToString(s[:6]) }

	// unmark removes the marks attach left: the tokens were never published.
	unmark := func(t *testing.T, dir string) {
		marks, err := filepath.Glob(filepath.Join(dir, "*", "*", "*.attached"))
		if err != nil || len(marks) == 0 {
			t.Fatalf("marks %v: %v", marks, err)
		}
		for _, m := range marks {
			if err := os.Remove(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	tests := []struct {
		name string
		// args are the arguments after "token prune"; DIR stands for the store's directory.
		args []string
		// env sets ATTEST_TOKEN_DIR to the store's directory; def puts the store in the default
		// directory under XDG_STATE_HOME instead of a directory of its own.
		env, def bool
		// setup changes the store's directory before the command.
		setup  func(t *testing.T, dir string)
		code   int
		stdout []string // substrings of stdout, DIR standing for the store's directory
		stderr string   // prefix of stderr
		left   []string // the tokens left in the store
	}{
		{
			name:   "--older-than is required",
			args:   []string{"--token-dir", "DIR"},
			code:   2,
			stderr: "oras-attest token prune: --older-than is required: a pruned token can no longer be attached, so choose how old a token must be to go, such as 720h0m0s\n\nUsage: oras-attest token prune --older-than DURATION",
			left:   all,
		},
		{
			name:   "not a duration",
			args:   []string{"--token-dir", "DIR", "--older-than", "30d"},
			code:   2,
			stderr: `oras-attest token prune: invalid argument "30d" for "--older-than" flag`,
			left:   all,
		},
		{
			name:   "zero",
			args:   []string{"--token-dir", "DIR", "--older-than", "0"},
			code:   2,
			stderr: "oras-attest token prune: --older-than 0s: want 1h0m0s or more",
			left:   all,
		},
		{
			name:   "negative",
			args:   []string{"--token-dir", "DIR", "--older-than", "-48h"},
			code:   2,
			stderr: "oras-attest token prune: --older-than -48h0m0s: want 1h0m0s or more",
			left:   all,
		},
		{
			name:   "under 1h refused",
			args:   []string{"--token-dir", "DIR", "--older-than", "59m59s"},
			code:   2,
			stderr: "oras-attest token prune: --older-than 59m59s: want 1h0m0s or more: a token stored more recently may belong to an image not attached yet (attach runs after notation sign), and a pruned token can no longer be attached\n",
			left:   all,
		},
		{
			name:   "an argument",
			args:   []string{"--token-dir", "DIR", "--older-than", "24h", "sha256:" + zeros},
			code:   2,
			stderr: `oras-attest token prune: unexpected argument "sha256:` + zeros + `"`,
			left:   all,
		},
		{
			name:   "output format",
			args:   []string{"--token-dir", "DIR", "--older-than", "24h", "-o", "yaml"},
			code:   2,
			stderr: `oras-attest token prune: unknown output format "yaml" (want text or json)`,
			left:   all,
		},
		{
			name: "1h removes all but the recent token",
			args: []string{"--token-dir", "DIR", "--older-than", "1h"},
			code: 0,
			stdout: []string{
				"removed " + subjectA + " token " + prefix("h.a-old.sig") + ", stored 48h0m0s ago, attached to rega.example/app\n",
				"removed " + subjectB + " token " + prefix("h.b-older.sig") + ", stored 72h0m0s ago, attached to rega.example/app, regb.example/app\n",
				"removed 2 tokens of 2 images from DIR, older than 1h0m0s (stored before ",
				"; 1 newer token kept\n",
			},
			left: []string{"h.a-recent.sig"},
		},
		{
			name:   "a longer age removes fewer",
			args:   []string{"--token-dir", "DIR", "--older-than", "60h"},
			code:   0,
			stdout: []string{"removed " + subjectB + " token " + prefix("h.b-older.sig") + ", stored 72h0m0s ago, attached to rega.example/app, regb.example/app\n", "removed 1 token of 1 image from DIR, older than 60h0m0s", "; 2 newer tokens kept\n"},
			left:   []string{"h.a-old.sig", "h.a-recent.sig"},
		},
		{
			name: "dry run",
			args: []string{"--token-dir", "DIR", "--older-than", "24h", "--dry-run"},
			code: 0,
			stdout: []string{
				"would remove " + subjectA + " token " + prefix("h.a-old.sig") + ", stored 48h0m0s ago, attached to rega.example/app\n",
				"would remove " + subjectB + " token " + prefix("h.b-older.sig") + ", stored 72h0m0s ago, attached to rega.example/app, regb.example/app\n",
				"would remove 2 tokens of 2 images from DIR, older than 24h0m0s", "; 1 newer token kept; nothing removed (--dry-run)\n",
			},
			left: all,
		},
		{
			name: "a token not attached to the promotion target kept",
			args: []string{"--token-dir", "DIR", "--older-than", "24h", "--require-repository", "regb.example/app"},
			code: 0,
			stdout: []string{
				"removed " + subjectB + " token " + prefix("h.b-older.sig") + ", stored 72h0m0s ago, attached to rega.example/app, regb.example/app\n",
				"removed 1 token of 1 image from DIR, older than 24h0m0s", "; 1 newer token kept; 1 older token not attached to regb.example/app kept (attach them there first)\n",
			},
			left: []string{"h.a-old.sig", "h.a-recent.sig"},
		},
		{
			name:   "both repositories required",
			args:   []string{"--token-dir", "DIR", "--older-than", "24h", "--require-repository", "rega.example/app", "--require-repository", "regb.example/app"},
			code:   0,
			stdout: []string{"removed 1 token of 1 image from DIR", "; 1 older token not attached to rega.example/app and regb.example/app kept"},
			left:   []string{"h.a-old.sig", "h.a-recent.sig"},
		},
		{
			name:   "a required repository with a tag refused",
			args:   []string{"--token-dir", "DIR", "--older-than", "24h", "--require-repository", "regb.example/app:v1"},
			code:   2,
			stderr: `oras-attest token prune: --require-repository "regb.example/app:v1": want a repository REGISTRY/REPO, without a tag or digest`,
			left:   all,
		},
		{
			name:   "nothing old enough",
			args:   []string{"--token-dir", "DIR", "--older-than", "100h"},
			code:   0,
			stdout: []string{"no token in DIR is older than 100h0m0s (stored before ", "; 3 newer tokens kept\n"},
			left:   all,
		},
		{
			name:   "ATTEST_TOKEN_DIR",
			args:   []string{"--older-than", "24h"},
			env:    true,
			code:   0,
			stdout: []string{"removed 2 tokens of 2 images from DIR"},
			left:   []string{"h.a-recent.sig"},
		},
		{
			name:   "the default store",
			args:   []string{"--older-than", "24h"},
			def:    true,
			code:   0,
			stdout: []string{"removed 2 tokens of 2 images from " + filepath.Join(state, "attested-kv", "tokens")},
			left:   []string{"h.a-recent.sig"},
		},
		{
			name: "entries not the store's named and left",
			args: []string{"--token-dir", "DIR", "--older-than", "24h"},
			setup: func(t *testing.T, dir string) {
				if err := os.WriteFile(filepath.Join(dir, "notes"), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			},
			code:   0,
			stdout: []string{"removed 2 tokens"},
			stderr: "oras-attest token prune: skipped DIR/notes: not an algorithm directory of the store (sha256 or sha512)\n",
			left:   []string{"h.a-recent.sig"},
		},
		{
			name: "a store others may write to refused",
			args: []string{"--token-dir", "DIR", "--older-than", "24h"},
			setup: func(t *testing.T, dir string) {
				if err := os.Chmod(dir, 0o777); err != nil {
					t.Fatal(err)
				}
			},
			code:   1,
			stderr: "oras-attest token prune: token store DIR is writable by others (mode 0777): chmod go-w it, or choose another token_dir\n",
			left:   all,
		},
		{
			name:   "old tokens attach never published kept",
			args:   []string{"--token-dir", "DIR", "--older-than", "24h"},
			setup:  unmark,
			code:   0,
			stdout: []string{"no token in DIR older than 24h0m0s (stored before ", ") can be removed; 1 newer token kept; 2 older tokens attach never published kept (attach the images first, or --include-unattached removes them"},
			left:   all,
		},
		{
			name:   "--include-unattached removes them too",
			args:   []string{"--token-dir", "DIR", "--older-than", "24h", "--include-unattached"},
			setup:  unmark,
			code:   0,
			stdout: []string{"removed 2 tokens of 2 images from DIR", ", stored 48h0m0s ago, never attached\n"},
			left:   []string{"h.a-recent.sig"},
		},
		{
			name: "an empty mark, from before marks named repositories, still counts",
			args: []string{"--token-dir", "DIR", "--older-than", "24h"},
			setup: func(t *testing.T, dir string) {
				marks, err := filepath.Glob(filepath.Join(dir, "*", "*", "*.attached"))
				if err != nil || len(marks) == 0 {
					t.Fatalf("marks %v: %v", marks, err)
				}
				for _, m := range marks {
					if err := os.WriteFile(m, nil, 0o600); err != nil {
						t.Fatal(err)
					}
				}
			},
			code: 0,
			stdout: []string{
				"removed " + subjectA + " token " + prefix("h.a-old.sig") + ", stored 48h0m0s ago, attached (repository not recorded)\n",
				"removed 2 tokens of 2 images from DIR",
			},
			left: []string{"h.a-recent.sig"},
		},
		{
			// In a cron job, a mistyped store would prune nothing every night, unseen.
			name:   "a store named that does not exist is an error",
			args:   []string{"--token-dir", "DIR-typo", "--older-than", "24h"},
			code:   1,
			stderr: "oras-attest token prune: token store DIR-typo (--token-dir or ", // then ATTEST_TOKEN_DIR, which the test would rewrite
			left:   all,
		},
		{
			name: "a leftover of an interrupted store removed",
			args: []string{"--token-dir", "DIR", "--older-than", "24h"},
			setup: func(t *testing.T, dir string) {
				tmp := filepath.Join(dir, "sha256", strings.TrimPrefix(subjectA, "sha256:"), "."+strings.Repeat("ab", 32)+".jwt.tmp-12345")
				if err := os.WriteFile(tmp, []byte("partial"), 0o600); err != nil {
					t.Fatal(err)
				}
				old := now.Add(-48 * time.Hour)
				if err := os.Chtimes(tmp, old, old); err != nil {
					t.Fatal(err)
				}
			},
			code:   0,
			stdout: []string{"removed 2 tokens", "; 1 leftover of an interrupted store removed\n"},
			left:   []string{"h.a-recent.sig"},
		},
		{
			name:   "help on stdout",
			args:   []string{"--help"},
			code:   0,
			stdout: []string{"Usage: oras-attest token prune --older-than DURATION [flags]", "--older-than duration", "at least 1h (required)", "--token-dir string", "--dry-run"},
			left:   all,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "tokens")
			if tc.def {
				dir = filepath.Join(state, "attested-kv", "tokens")
				t.Cleanup(func() { os.RemoveAll(dir) })
			}
			store := token.NewStore(dir)
			for _, tok := range tokens {
				e, err := store.Put(tok.subject, tok.raw)
				if err != nil {
					t.Fatal(err)
				}
				mtime := now.Add(-tok.age)
				if err := os.Chtimes(e.Path, mtime, mtime); err != nil {
					t.Fatal(err)
				}
				// As attach marks what it published, and where.
				for _, repo := range tok.repos {
					if err := store.MarkAttached(tok.subject, e.SHA256, repo); err != nil {
						t.Fatal(err)
					}
				}
			}
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			if tc.env {
				t.Setenv("ATTEST_TOKEN_DIR", dir)
			}
			args := []string{"token", "prune"}
			for _, a := range tc.args {
				args = append(args, strings.ReplaceAll(a, "DIR", dir))
			}
			code, stdout, stderr := runCmd(args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, stdout, stderr)
			}
			for _, s := range tc.stdout {
				if s = strings.ReplaceAll(s, "DIR", dir); !strings.Contains(stdout, s) {
					t.Errorf("stdout lacks %q:\n%s", s, stdout)
				}
			}
			if want := strings.ReplaceAll(tc.stderr, "DIR", dir); !strings.HasPrefix(stderr, want) || (want == "" && stderr != "") {
				t.Errorf("stderr:\n%s\nwant it starting %q", stderr, want)
			}
			if tc.code == 2 && stdout != "" {
				t.Errorf("a usage error printed on stdout:\n%s", stdout)
			}
			if err := os.Chmod(dir, 0o700); err != nil { // for List
				t.Fatal(err)
			}
			var left []string
			for _, subject := range []string{subjectA, subjectB} {
				es, _ := store.List(subject)
				for _, e := range es {
					left = append(left, e.Raw)
				}
			}
			slices.Sort(left)
			if !slices.Equal(left, tc.left) {
				t.Errorf("tokens left %v, want %v", left, tc.left)
			}
		})
	}
}

// TestTokenPruneJSON: with -o json, token prune prints an object naming each token removed (or,
// with --dry-run, that would be removed) with the repositories attach published it to, the
// tokens kept and the entries skipped.
func TestTokenPruneJSON(t *testing.T) {
	subject := "sha256:" + strings.Repeat("c", 64)
	for _, dryRun := range []bool{false, true} {
		t.Run(map[bool]string{false: "remove", true: "dry run"}[dryRun], func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "tokens")
			store := token.NewStore(dir)
			old := time.Now().Add(-48 * time.Hour).Truncate(time.Second)
			e, err := store.Put(subject, "h.old.sig")
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(e.Path, old, old); err != nil {
				t.Fatal(err)
			}
			for _, repo := range []string{"rega.example/app", "regb.example/app"} {
				if err := store.MarkAttached(subject, e.SHA256, repo); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := store.Put(subject, "h.new.sig"); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "notes"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			args := []string{"token", "prune", "--token-dir", dir, "--older-than", "24h", "-o", "json"}
			if dryRun {
				args = append(args, "--dry-run")
			}
			code, stdout, stderr := runCmd(args...)
			if code != 0 {
				t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
			}
			var res pruneResult
			if err := json.Unmarshal([]byte(stdout), &res); err != nil {
				t.Fatalf("%v: %s", err, stdout)
			}
			want := token.Pruned{Subject: subject, SHA256: e.SHA256, Modified: old, Path: e.Path}
			if len(res.Removed) != 1 || res.Removed[0].Subject != want.Subject || res.Removed[0].SHA256 != want.SHA256 ||
				!res.Removed[0].Modified.Equal(want.Modified) || res.Removed[0].Path != want.Path ||
				!res.Removed[0].Attached || !slices.Equal(res.Removed[0].Repositories, []string{"rega.example/app", "regb.example/app"}) {
				t.Errorf("removed %+v, want [%+v]", res.Removed, want)
			}
			if res.DryRun != dryRun || res.TokenDir != dir || res.OlderThan != "24h0m0s" || res.Kept != 1 || res.Error != "" ||
				time.Since(res.Before) < 24*time.Hour || time.Since(res.Before) > 25*time.Hour {
				t.Errorf("result %+v", res)
			}
			if len(res.Skipped) != 1 || res.Skipped[0].Path != filepath.Join(dir, "notes") || res.Skipped[0].Reason == "" {
				t.Errorf("skipped %+v, want the file notes", res.Skipped)
			}
			// Lists are lists, empty ones too, for a script reading them.
			for _, member := range []string{`"skipped": [`, `"requiredRepositories": []`, `"unconfirmed": []`, `"checkRegistry": false`} {
				if !strings.Contains(stdout, member) {
					t.Errorf("JSON output without %s: %s", member, stdout)
				}
			}
			if _, err := os.Stat(e.Path); dryRun != (err == nil) {
				t.Errorf("old token after a prune with dry run %v: %v", dryRun, err)
			}
		})
	}
}

// TestTokenPruneJSONRequiredRepositories: -o json names the repositories required and counts the
// tokens kept for want of them.
func TestTokenPruneJSONRequiredRepositories(t *testing.T) {
	subject := "sha256:" + strings.Repeat("d", 64)
	dir := filepath.Join(t.TempDir(), "tokens")
	store := token.NewStore(dir)
	e, err := store.Put(subject, "h.old.sig")
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(e.Path, old, old); err != nil {
		t.Fatal(err)
	}
	if err := store.MarkAttached(subject, e.SHA256, "rega.example/app"); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCmd("token", "prune", "--token-dir", dir, "--older-than", "24h", "--require-repository", "regc.example/app", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	var res pruneResult
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("%v: %s", err, stdout)
	}
	if len(res.Removed) != 0 || res.NotEverywhere != 1 || !slices.Equal(res.RequiredRepositories, []string{"regc.example/app"}) {
		t.Fatalf("result %+v, want nothing removed and 1 token kept as not attached to regc.example/app", res)
	}
	if _, err := os.Stat(e.Path); err != nil {
		t.Fatalf("the token kept is gone: %v", err)
	}
}
