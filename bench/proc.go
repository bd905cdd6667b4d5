package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// This file reads /proc: CPU time and memory of a process, the machine's
// load average and busy time. Linux only, like the rest of the harness.

// clockTicks is USER_HZ, the unit of utime/stime in /proc/<pid>/stat and of
// /proc/stat. It comes from the auxiliary vector (AT_CLKTCK), so no cgo
// sysconf is needed; 100 is the Linux default if auxv cannot be read.
var clockTicks = sync.OnceValue(func() float64 {
	b, err := os.ReadFile("/proc/self/auxv")
	if err == nil {
		const atClkTck = 17
		for i := 0; i+16 <= len(b); i += 16 {
			k, v := binary.LittleEndian.Uint64(b[i:]), binary.LittleEndian.Uint64(b[i+8:])
			if k == atClkTck && v > 0 {
				return float64(v)
			}
			if k == 0 {
				break
			}
		}
	}
	return 100
})

// procCPU returns the user+system CPU time a process has used (all threads).
// pid 0 means this process.
func procCPU(pid int) (time.Duration, error) {
	path := "/proc/self/stat"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/stat", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	// comm (field 2) may contain spaces and parentheses: split after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("%s: unexpected format", path)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("%s: too few fields", path)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return time.Duration(float64(ut+st) / clockTicks() * float64(time.Second)), nil
}

// memInfo is a process's resident memory from /proc/<pid>/status.
type memInfo struct {
	HWM int64 // VmHWM: peak resident set, bytes
	RSS int64 // VmRSS: resident set now, bytes
}

func procMem(pid int) (memInfo, error) {
	path := "/proc/self/status"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/status", pid)
	}
	f, err := os.Open(path)
	if err != nil {
		return memInfo{}, err
	}
	defer f.Close()
	var m memInfo
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || (name != "VmHWM" && name != "VmRSS") {
			continue
		}
		fields := strings.Fields(rest) // "12345 kB"
		if len(fields) < 1 {
			continue
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return memInfo{}, fmt.Errorf("%s: %s: %w", path, name, err)
		}
		if name == "VmHWM" {
			m.HWM = kb << 10
		} else {
			m.RSS = kb << 10
		}
	}
	return m, sc.Err()
}

// loadAvg returns the first three fields of /proc/loadavg ("1.02 0.88 0.75").
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "n/a"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "n/a"
	}
	return strings.Join(f[:3], " ")
}

// machineBusy returns the CPU time all cores spent not idle (user, nice,
// system, irq, softirq, steal) since boot, from /proc/stat.
func machineBusy() (time.Duration, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, errors.New("/proc/stat: empty")
	}
	fields := strings.Fields(sc.Text())
	if len(fields) < 9 || fields[0] != "cpu" {
		return 0, errors.New("/proc/stat: unexpected first line")
	}
	var busy uint64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system [idle iowait] irq softirq steal
		v, err := strconv.ParseUint(fields[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		busy += v
	}
	return time.Duration(float64(busy) / clockTicks() * float64(time.Second)), nil
}

// cpuMeter measures, over an interval, the CPU of this process (the
// harness: NATS server, sandbox, load generators), of the worker processes,
// and of the whole machine, so that a report can say how much CPU other
// users of the machine took meanwhile.
type cpuMeter struct {
	mu      sync.Mutex
	start   time.Time
	machine time.Duration
	self    time.Duration
	workers map[int]*cpuSpan // by pid
}

type cpuSpan struct{ first, last time.Duration }

func newCPUMeter(pids ...int) *cpuMeter {
	m := &cpuMeter{start: time.Now(), workers: make(map[int]*cpuSpan)}
	m.machine, _ = machineBusy()
	m.self, _ = procCPU(0)
	for _, pid := range pids {
		m.track(pid)
	}
	return m
}

// track starts following pid (a worker started after the meter).
func (m *cpuMeter) track(pid int) {
	c, _ := procCPU(pid)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.workers[pid] = &cpuSpan{first: c, last: c}
}

// sample records pid's CPU now; call it before killing a tracked process,
// whose time can no longer be read afterwards.
func (m *cpuMeter) sample(pid int) {
	c, err := procCPU(pid)
	if err != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.workers[pid]; ok {
		s.last = c
	}
}

// cpuUsage is what a cpuMeter measured.
type cpuUsage struct {
	Wall    time.Duration
	Harness time.Duration // this process: NATS server, sandbox, load
	Workers time.Duration // the worker processes together
	Machine time.Duration // every process on the machine
}

// Others is the CPU the rest of the machine used (other engineers' runs).
func (u cpuUsage) Others() time.Duration {
	return max(u.Machine-u.Harness-u.Workers, 0)
}

// Cores expresses d over the interval as a number of busy cores.
func (u cpuUsage) Cores(d time.Duration) float64 {
	if u.Wall <= 0 {
		return 0
	}
	return d.Seconds() / u.Wall.Seconds()
}

// read samples every live tracked process and returns the usage since the
// meter started.
func (m *cpuMeter) read() cpuUsage {
	m.mu.Lock()
	pids := make([]int, 0, len(m.workers))
	for pid := range m.workers {
		pids = append(pids, pid)
	}
	m.mu.Unlock()
	for _, pid := range pids {
		m.sample(pid)
	}
	machine, _ := machineBusy()
	self, _ := procCPU(0)
	m.mu.Lock()
	defer m.mu.Unlock()
	u := cpuUsage{Wall: time.Since(m.start), Machine: machine - m.machine, Harness: self - m.self}
	for _, s := range m.workers {
		u.Workers += s.last - s.first
	}
	return u
}

// stallProbe measures how late this process's goroutines wake: a loop
// sleeps 10 ms and records by how much each sleep overran. On a machine
// shared with other work, it shows how starved of CPU the NATS server and
// the sandbox (which run in this process) were during a run.
type stallProbe struct {
	mu      sync.Mutex
	samples []stallSample
	stop    chan struct{}
	done    chan struct{}
}

type stallSample struct {
	at   time.Time
	late time.Duration
}

func startStallProbe() *stallProbe {
	p := &stallProbe{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		const tick = 10 * time.Millisecond
		for {
			start := time.Now()
			select {
			case <-p.stop:
				return
			case <-time.After(tick):
			}
			now := time.Now()
			p.mu.Lock()
			p.samples = append(p.samples, stallSample{at: now, late: now.Sub(start) - tick})
			p.mu.Unlock()
		}
	}()
	return p
}

func (p *stallProbe) close() {
	select {
	case <-p.stop:
	default:
		close(p.stop)
	}
	<-p.done
}

// stallStats summarises the probe's lateness in w.
type stallStats struct {
	P99, Max time.Duration
	Over20ms int // wake-ups more than 20 ms late (the limiter's Guard)
}

func (p *stallProbe) stats(w window) stallStats {
	p.mu.Lock()
	var ls []time.Duration
	for _, s := range p.samples {
		if w.contains(s.at) {
			ls = append(ls, s.late)
		}
	}
	p.mu.Unlock()
	if len(ls) == 0 {
		return stallStats{}
	}
	slices.Sort(ls)
	st := stallStats{P99: ls[len(ls)*99/100], Max: ls[len(ls)-1]}
	for _, l := range ls {
		if l > 20*time.Millisecond {
			st.Over20ms++
		}
	}
	return st
}

func (s stallStats) String() string {
	return fmt.Sprintf("%s · %s · %d", ms(s.P99), ms(s.Max), s.Over20ms)
}
