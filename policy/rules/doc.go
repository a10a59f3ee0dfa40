// Package rules parses, compiles and evaluates claim rules: named CEL expressions over the
// claims of a Microsoft Azure Attestation (MAA) token that decide whether the machine that
// asked for a signature is acceptable. The signing plugin evaluates them before it signs, and
// the verifiers evaluate the same file before deployment, so one file states the policy for
// both sides.
//
// # Rule file format
//
// A rule file is UTF-8 text, at most [MaxFileSize] bytes and [MaxRules] rules:
//
//	# Comment lines start with '#' (after optional whitespace); blank lines are ignored.
//	secure-boot: claims["secureboot"] == true
//	no-kernel-debug: claims["x-ms-azurevm-kerneldebug-enabled"] == false
//	pcrs-0-7-attested: [0, 1, 2, 3, 4, 5, 6, 7].all(p,
//	    p in claims["x-ms-azurevm-attested-pcrs"])
//
// The rules of the format:
//
//   - Each rule starts at the beginning of a line with its name, a colon, and a CEL
//     expression. Names match [a-z0-9][a-z0-9-]{0,62} and are unique within the file.
//   - A line that starts with whitespace continues the expression of the rule above it, so a
//     long expression can be split over lines. Continuation lines are trimmed and joined with
//     a newline; indented comment lines between them are skipped. (A line whose first
//     non-blank character is '#' is always a comment; CEL itself never uses '#'. Because
//     continuation lines are trimmed, leading spaces inside a multi-line string literal are
//     not kept.)
//   - A blank line or a comment that starts at the beginning of a line ends the rule above:
//     a continuation line after one is a syntax error. Otherwise the continuation of a
//     commented-out rule would silently extend the rule above it.
//   - A file with no rules is an error: an empty policy would accept every machine.
//
// # Expressions
//
// The only variable is claims, of CEL type map(string, dyn), holding the token's claim set
// as decoded from JSON. Every expression must produce a bool (checked at compile time where
// the type is known, and again at evaluation). The CEL standard library, the ext.Strings
// extension (e.g. claims["x-ms-azurevm-osdistro"].lowerAscii()) and optional values
// (claims[?"x"].orValue(false)) are available.
//
// JSON numbers arrive as CEL doubles (Go float64). Numeric comparisons across int and double
// are enabled, so claims["x-ms-azurevm-osversion-major"] >= 20 and >= 20.0 both work, as does
// 7 in claims["x-ms-azurevm-attested-pcrs"]; int(claims["x-ms-azurevm-osversion-major"])
// converts explicitly. JSON booleans are CEL bools: claims["secureboot"] == true.
//
// # Failing closed
//
// A rule that does not compile makes [Parse] fail, naming the file, line and rule. At
// evaluation, a rule that refers to a claim the token lacks fails with CEL's
// "no such key: <claim>" error, a rule that yields a non-bool fails, and a rule that exceeds
// the cost limit ([CostLimit]) or the time limit ([EvalTimeout]) fails; each failure carries
// the rule's name. [Set.Evaluate] runs every rule so that a user sees all failures at once;
// [Result.Err] is nil only if every rule passed.
//
// [Baseline] returns the built-in rules for Azure Trusted Launch VMs; the same text is kept in
// baseline.cel next to this package for users to copy and extend.
package rules
