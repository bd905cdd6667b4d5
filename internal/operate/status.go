package operate

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"

	"github.com/omicsq/omicsq/client"
	"github.com/omicsq/omicsq/internal/samplesheet"
	"github.com/omicsq/omicsq/internal/settings"
)

const statusUsage = `Usage: enqueue status [flags] KEY|FILE...

Prints where each request stands: pending, dead_lettered, submitted (run group, no
status reported yet), running, succeeded or failed, with the run group, its status and
the API's error message. An argument that names a file is read as a sample sheet (any
input enqueue accepts) and stands for the keys of its requests; any other is a key.

Exit status: 0 every request succeeded; 1 any failed or was dead-lettered; 2 some are
not finished; 64 usage error.

`

// exitUnfinished is the status of a query with requests not finished yet
// (the status of enqueue's --wait timeout).
const exitUnfinished = 2

// Status is enqueue status: where each request stands, from the results,
// dead-letter and status streams.
func Status(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	c := NewConfig()
	var defaults samplesheet.Defaults
	table := slices.Concat(c.ConnFlags(), c.TopoFlags(), c.LimitFlags(), []settings.Setting{
		settings.Row("application-id", "OMICSQ_APPLICATION_ID", "CSV: ApplicationId for rows without one", settings.String(&defaults.ApplicationID, "")),
		settings.Row("environment-id", "OMICSQ_ENVIRONMENT_ID", "CSV: EnvironmentId for rows without one", settings.String(&defaults.EnvironmentID, "")),
		settings.Row("project-id", "OMICSQ_PROJECT_ID", "CSV: ProjectId for rows without one", settings.String(&defaults.ProjectID, "")),
	})
	pos, err := settings.ParseCommand("enqueue status", statusUsage, stderr, table, args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if err == nil {
		err = c.Validate()
	}
	if err == nil && len(pos) == 0 {
		err = errors.New("give one or more KEYs or FILEs")
	}
	if err != nil {
		fmt.Fprintf(stderr, "enqueue status: %v\n", err)
		return ExitUsage
	}
	keys, err := statusKeys(c, defaults, pos)
	if err != nil {
		fmt.Fprintf(stderr, "enqueue status: %v\n", err)
		return ExitUsage
	}
	s, err := Connect(ctx, c, stderr, slog.LevelWarn)
	if err != nil {
		return failed(stderr, "enqueue status", err)
	}
	defer s.Close()
	return printStates(ctx, s.Client, keys, stdout, stderr)
}

// statusKeys turns the arguments into keys, reading files as sample sheets.
func statusKeys(c *Config, defaults samplesheet.Defaults, args []string) ([]string, error) {
	var keys []string
	for _, a := range args {
		if fi, err := os.Stat(a); err != nil || fi.IsDir() {
			if kerr := client.ValidateKey(a); kerr != nil {
				return nil, fmt.Errorf("%s is neither a file nor a key: %v", Printable(a), kerr)
			}
			keys = append(keys, a)
			continue
		}
		data, err := os.ReadFile(a)
		if err != nil {
			return nil, err
		}
		p := samplesheet.NewParser(samplesheet.Options{Limits: c.Limits, MaxRequests: c.MaxRequests, Defaults: defaults, ReadFile: os.ReadFile})
		items, invalid := p.Parse(a, filepath.Dir(a), data, samplesheet.FormatAuto)
		if len(invalid) > 0 {
			return nil, fmt.Errorf("%s: %d invalid requests (enqueue --dry-run %s lists them)", a, len(invalid), a)
		}
		for _, it := range items {
			keys = append(keys, it.Key)
		}
	}
	return keys, nil
}

// printStates prints one line per key and a count per phase.
func printStates(ctx context.Context, cl *client.Client, keys []string, stdout, stderr io.Writer) int {
	count := map[client.Phase]int{}
	for _, k := range keys {
		st, err := cl.State(ctx, k)
		if err != nil {
			fmt.Fprintf(stderr, "enqueue status: %s: %v\n", k, err)
			return ExitFailed
		}
		p := st.Phase()
		count[p]++
		line := k + " " + string(p)
		switch {
		case st.Status != nil:
			line += " " + Printable(st.Status.RunGroupID) + " " + Printable(st.Status.Status)
			if st.Status.ErrorMessage != "" {
				line += ": " + Printable(st.Status.ErrorMessage)
			}
		case st.Result != nil:
			line += " " + Printable(st.Result.RunGroupID)
		case st.DeadLetter != nil:
			line += fmt.Sprintf(" %s %s (enqueue dlq show %d)", st.DeadLetter.Reason(), Printable(st.DeadLetter.Code()), st.DeadLetter.Sequence)
		}
		fmt.Fprintln(stdout, line)
	}
	summary := "enqueue status:"
	for _, p := range client.Phases {
		summary += fmt.Sprintf(" %d %s", count[p], p)
	}
	fmt.Fprintln(stderr, summary)
	switch {
	case count[client.PhaseFailed] > 0 || count[client.PhaseDeadLettered] > 0:
		return ExitFailed
	case count[client.PhaseSucceeded] < len(keys):
		return exitUnfinished
	}
	return ExitOK
}
