package notationcfg

import (
	"encoding/json"
	"os"
	"testing"

	"github.com/notaryproject/notation-go/verifier/trustpolicy"
)

// TestCommittedExample checks that the repository's example trustpolicy.json (what apply writes)
// is a trust policy notation accepts.
func TestCommittedExample(t *testing.T) {
	b, err := os.ReadFile("../../trustpolicy.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc trustpolicy.Document
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(); err != nil {
		t.Fatalf("notation refuses the example: %v", err)
	}
}
