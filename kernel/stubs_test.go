package kernel

import (
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"tracebed/idt"
)

// The checked-in stubs are what idt says they are: run `go generate ./kernel` after changing
// idt's vector lists.
func TestEntryStubsAreCurrent(t *testing.T) {
	b, err := os.ReadFile("entry_stubs_amd64.s")
	require.NoError(t, err)
	assert.Equal(t, idt.EntryStubs(), string(b), "entry_stubs_amd64.s is stale: run go generate ./kernel")
}
