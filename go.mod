module tracebed

go 1.26.8

require github.com/usbarmory/tamago v1.26.1
