module tracebed

go 1.26.1

toolchain go1.26.8

require github.com/usbarmory/tamago v1.26.1

require golang.org/x/arch v0.32.0

require (
	github.com/stretchr/testify v1.12.1
	go.yaml.in/yaml/v3 v3.0.5 // indirect
)
