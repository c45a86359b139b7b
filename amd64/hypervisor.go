package amd64

// Hypervisor identification (CPUID leaf 1 ECX bit 31 and the vendor leaves from 0x40000000;
// Linux Documentation/virt/kvm/x86/cpuid.rst, Xen's arch-x86/cpuid.h, QEMU target/i386).

// Hypervisor names the hypervisor CPUID reports.
type Hypervisor string

const (
	HVNone    Hypervisor = "none"
	HVKVM     Hypervisor = "KVM"
	HVXen     Hypervisor = "Xen"
	HVTCG     Hypervisor = "TCG"
	HVHyperV  Hypervisor = "Hyper-V"
	HVVMware  Hypervisor = "VMware"
	HVUnknown Hypervisor = "unknown"
)

const (
	cpuidHypervisorBit = 1 << 31 // CPUID.1:ECX
	hvLeafBase         = 0x40000000
	hvLeafStep         = 0x100 // Xen moves its leaves up by 0x100 when it also offers Viridian
	hvLeafTries        = 4
)

// HypervisorFromSignature maps the 12-byte vendor signature of a hypervisor leaf (EBX, ECX,
// EDX of CPUID 0x40000000) to a name.
func HypervisorFromSignature(ebx, ecx, edx uint32) Hypervisor {
	var b [12]byte
	for i, r := range [3]uint32{ebx, ecx, edx} {
		b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(r), byte(r>>8), byte(r>>16), byte(r>>24)
	}
	switch string(b[:]) {
	case "KVMKVMKVM\x00\x00\x00":
		return HVKVM
	case "XenVMMXenVMM":
		return HVXen
	case "TCGTCGTCGTCG":
		return HVTCG
	case "Microsoft Hv":
		return HVHyperV
	case "VMwareVMware":
		return HVVMware
	}
	return HVUnknown
}

// DetectHypervisor reports the hypervisor from CPUID: HVNone when the hypervisor bit is clear.
// Xen is looked for at every 0x100 step (it sits at 0x40000100 behind a Viridian leaf); the
// first other known signature wins.
func DetectHypervisor() (Hypervisor, uint32) {
	if _, _, ecx, _ := CPUID(1, 0); ecx&cpuidHypervisorBit == 0 {
		return HVNone, 0
	}
	first, firstLeaf := HVUnknown, uint32(0)
	for i := uint32(0); i < hvLeafTries; i++ {
		leaf := hvLeafBase + i*hvLeafStep
		_, ebx, ecx, edx := CPUID(leaf, 0)
		hv := HypervisorFromSignature(ebx, ecx, edx)
		if hv == HVXen {
			return hv, leaf
		}
		if i == 0 {
			first, firstLeaf = hv, leaf
		}
	}
	return first, firstLeaf
}
