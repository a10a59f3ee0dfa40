package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/attested-kv/attested-kv/internal/cliutil"
	"github.com/attested-kv/attested-kv/internal/maa"
	"github.com/attested-kv/attested-kv/policy/rules"
)

// rulesTest evaluates a rule file against a claim set (a JSON object, or a token whose claims
// are read without verification) and names each failing rule.
func rulesTest(args []string, io cmdIO) int {
	fs := newFlags("oras-attest rules test", "oras-attest rules test --rules FILE --claims FILE [-o json]", io.stderr)
	rulesFile := fs.String("rules", "", "CEL rule file (\"baseline\" for the built-in baseline)")
	claimsFile := fs.String("claims", "", "claims as a JSON object, or a token file (its claims are read unverified)")
	output := fs.StringP("output", "o", "text", "output format: text or json")
	if code, done := parse(fs, args, io.stdout); done {
		return code
	}
	fail := func(code int, err error) int {
		return report(io, "oras-attest rules test", *output == "json", code, err)
	}
	if *rulesFile == "" || *claimsFile == "" || fs.NArg() != 0 {
		return fail(2, errors.New("--rules and --claims are required"))
	}
	if err := cliutil.CheckFormat(*output); err != nil {
		return fail(2, err)
	}
	path := *rulesFile
	if path == "baseline" {
		path = ""
	}
	rs, err := rules.LoadOrBaseline(path)
	if err != nil {
		return fail(fileCode(err), err)
	}
	b, err := os.ReadFile(*claimsFile)
	if err != nil {
		return fail(1, fmt.Errorf("--claims: %w", err))
	}
	var claims map[string]any
	if err := json.Unmarshal(b, &claims); err != nil {
		raw, rerr := readToken(*claimsFile, io.stdin)
		if rerr != nil {
			return fail(fileCode(rerr), rerr)
		}
		if _, claims, err = maa.ParseUnverified(raw); err != nil {
			return fail(2, fmt.Errorf("%s is neither a JSON claim set nor a token: %w", *claimsFile, err))
		}
	}
	res := rs.Evaluate(claims)
	if *output == "json" {
		// Named as the other commands' results are: passed, then what was checked.
		cliutil.WriteJSON(io.stdout, struct {
			Passed bool `json:"passed"`
			rules.Result
		}{res.Err() == nil, res})
	} else {
		for _, r := range res.Rules {
			text := r.Name
			if !r.Passed {
				text += ": " + r.Reason
			}
			printCheck(io.stdout, r.Passed, text)
		}
	}
	if res.Err() != nil {
		return 1
	}
	return 0
}
