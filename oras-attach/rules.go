package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/attested-kv/attested-kv/internal/atomicfile"
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

// pinnedRule names the rule rules pin-vm adds.
const pinnedRule = "build-vms"

// vmIDPattern is a VM id as Azure prints it (az vm show --query vmId, IMDS compute/vmId).
var vmIDPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// rulesPinVM writes a rule file that admits the tokens of the given VMs only: a base rule file
// (the built-in baseline by default) and a rule on x-ms-azurevm-vmid. The VM ids are the
// operator's (from az vm show or IMDS), never taken from a token: an unverified token could name
// anyone's VM. The file is checked to compile before it is written.
func rulesPinVM(args []string, io cmdIO) int {
	fs := newFlags("oras-attest rules pin-vm", "oras-attest rules pin-vm --vm-id ID [--vm-id ID ...] [--rules FILE] [--out FILE]", io.stderr)
	var ids []string
	fs.StringArrayVar(&ids, "vm-id", nil, "a build VM's id (az vm show --query vmId, or IMDS compute/vmId); repeat for each build VM")
	base := fs.String("rules", "baseline", "the rule file to add the pin to (\"baseline\": the built-in baseline)")
	out := fs.String("out", "", "write the rule file here (default: standard output)")
	if code, done := parse(fs, args, io.stdout); done {
		return code
	}
	fail := func(code int, err error) int {
		fmt.Fprintln(io.stderr, "oras-attest rules pin-vm:", err)
		return code
	}
	if len(ids) == 0 || fs.NArg() != 0 {
		return fail(2, errors.New("give each build VM's id with --vm-id (az vm show --query vmId)"))
	}
	// Tokens carry the id in upper case, az and IMDS print it in lower case: the rule compares
	// upper case (see baseline.cel).
	var pinned []string
	for _, id := range ids {
		if !vmIDPattern.MatchString(id) {
			return fail(2, fmt.Errorf("--vm-id %q: want a VM id such as 7f3c2a9e-1b4d-4e8f-9a6b-2c5d8e1f0a3b", id))
		}
		if up := strings.ToUpper(id); !slices.Contains(pinned, up) {
			pinned = append(pinned, up)
		}
	}
	src := rules.BaselineSource()
	name := "baseline.cel"
	if *base != "baseline" {
		b, err := os.ReadFile(*base)
		if err != nil {
			return fail(1, fmt.Errorf("--rules: %w", err))
		}
		src, name = b, *base
	}
	quoted := make([]string, len(pinned))
	for i, id := range pinned {
		quoted[i] = strconv.Quote(id)
	}
	text := string(bytes.TrimRight(src, "\n")) + "\n\n# Added by oras-attest rules pin-vm: only tokens of these build VMs pass.\n" +
		pinnedRule + `: claims["` + maa.ClaimVMID + `"].upperAscii() in [` + strings.Join(quoted, ", ") + "]\n"
	rs, err := rules.Parse(name+" with the VM pin", []byte(text))
	if err != nil {
		return fail(2, fmt.Errorf("--rules %s: %w", name, err))
	}
	if *out == "" {
		fmt.Fprint(io.stdout, text)
		return 0
	}
	if err := atomicfile.Write(*out, []byte(text), 0o644); err != nil {
		return fail(1, err)
	}
	fmt.Fprintf(io.stderr, "oras-attest rules pin-vm: wrote %s (%d rules; give it as the plugin's rules and the verifiers' --rules / rules)\n", *out, len(rs.Rules()))
	return 0
}
