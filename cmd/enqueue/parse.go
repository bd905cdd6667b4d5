package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/omicsq/omicsq/internal/samplesheet"
)

// item is one validated request, ready to publish; location says where in
// the inputs it came from.
type (
	item     = samplesheet.Request
	location = samplesheet.Location
)

// readInputs reads and validates every file ("-": standard input), then
// checks keys and names across all of them.
func readInputs(c *config, f samplesheet.Format, files []string, stdin io.Reader) ([]item, []*samplesheet.Error, error) {
	p := samplesheet.NewParser(samplesheet.Options{
		Limits: c.Limits, MaxRequests: c.MaxRequests, Defaults: c.defaults, ReadFile: os.ReadFile,
	})
	var items []item
	var invalid []*samplesheet.Error
	usedStdin := false
	for _, file := range files {
		var data []byte
		var err error
		name, dir := file, filepath.Dir(file)
		if file == "-" {
			if usedStdin {
				return nil, nil, errors.New("standard input (-) can be read only once")
			}
			usedStdin = true
			name, dir = "stdin", "."
			data, err = io.ReadAll(stdin)
		} else {
			data, err = os.ReadFile(file)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read %s: %w", name, err)
		}
		its, errs := p.Parse(name, dir, data, f)
		items = append(items, its...)
		invalid = append(invalid, errs...)
	}
	items, dupErrs := samplesheet.CrossCheck(items)
	return items, append(invalid, dupErrs...), nil
}
