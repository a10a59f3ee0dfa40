package token

import (
	"fmt"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/opencontainers/go-digest"
)

// BenchmarkPut measures Put, whose cost is dominated by the fsyncs that make a token durable
// before the plugin reports success. Run it on the disk the store lives on (TMPDIR), not tmpfs.
func BenchmarkPut(b *testing.B) {
	benches := []struct {
		name string
		// store and subject give the store and subject of the i-th Put.
		store   func(base string, i int) string
		subject func(i int) string
	}{
		{
			name:    "existing subject",
			store:   func(base string, _ int) string { return base },
			subject: func(int) string { return subjectA },
		},
		{
			name:    "new subject",
			store:   func(base string, _ int) string { return base },
			subject: func(i int) string { return digest.FromString(strconv.Itoa(i)).String() },
		},
		{
			name:    "new store",
			store:   func(base string, i int) string { return filepath.Join(base, strconv.Itoa(i)) },
			subject: func(int) string { return subjectA },
		},
	}
	for _, bc := range benches {
		b.Run(bc.name, func(b *testing.B) {
			base := b.TempDir()
			if _, err := NewStore(base).Put(subjectA, "h.warm.sig"); err != nil {
				b.Fatal(err)
			}
			stores := make([]*Store, b.N)
			subjects := make([]string, b.N)
			raws := make([]string, b.N)
			for i := range b.N {
				stores[i] = NewStore(bc.store(base, i))
				subjects[i] = bc.subject(i)
				raws[i] = fmt.Sprintf("h.%d.sig", i)
			}
			b.ResetTimer()
			for i := range b.N {
				if _, err := stores[i].Put(subjects[i], raws[i]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
