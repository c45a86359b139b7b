package apic

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// Encodings from SDM Vol. 3A, Figure 10-12 (xAPIC ICR) and 10.12.9 (x2APIC ICR).
func TestICR(t *testing.T) {
	for _, tc := range []struct {
		name      string
		x2        bool
		dest      uint32
		vector    uint8
		delivery  uint32
		shorthand uint32
		want      uint64
	}{
		{"fixed to 3", false, 3, 0x31, DeliveryFixed, ToDest, 0x03000000_00000031},
		{"fixed, x2APIC ID 300", true, 300, 0x31, DeliveryFixed, ToDest, 0x0000012c_00000031},
		{"NMI asserts the level", false, 1, 0, DeliveryNMI, ToDest, 0x01000000_00004400},
		{"INIT asserts the level", false, 2, 0, DeliveryINIT, ToDest, 0x02000000_00004500},
		{"SIPI page 8", false, 2, 0x08, DeliverySIPI, ToDest, 0x02000000_00000608},
		{"self", false, 0, 0x33, DeliveryFixed, ToSelf, 0x00040033},
		{"all but self", false, 0, 0x32, DeliveryFixed, ToAllButSelf, 0x000c0032},
		{"all", true, 0, 0x32, DeliveryFixed, ToAll, 0x00080032},
		{"xAPIC keeps 8 ID bits", false, 0x1ff, 1, DeliveryFixed, ToDest, 0xff000000_00000001},
	} {
		assert.Equal(t, tc.want, ICR(tc.x2, tc.dest, tc.vector, tc.delivery, tc.shorthand), tc.name)
	}
}

func TestX2APICMSR(t *testing.T) {
	assert.Equal(t, uint32(0x802), X2APICMSR(RegID))
	assert.Equal(t, uint32(0x80b), X2APICMSR(RegEOI))
	assert.Equal(t, uint32(0x80f), X2APICMSR(RegSVR))
	assert.Equal(t, uint32(0x830), X2APICMSR(RegICRLow))
	assert.Equal(t, uint32(0x832), X2APICMSR(RegLVTTimer))
	assert.Equal(t, uint32(0x838), X2APICMSR(RegTimerInitial))
	assert.Equal(t, uint32(0x839), X2APICMSR(RegTimerCurrent))
	assert.Equal(t, uint32(0x83e), X2APICMSR(RegTimerDivide))
}
