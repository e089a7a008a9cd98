package stack

import (
	"fmt"
	"reflect"
	"strings"
	"sync"
	"time"
	"unsafe"

	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// fragState points into the reassembly state of one gVisor network
// protocol instance: the *fragmentation.Fragmentation in the field
// "fragmentation" of ipv4's and ipv6's unexported protocol type, which
// gVisor creates with constant limits and exposes no option for. The
// fields are found by name and type, so that a gVisor version that renames
// or retypes one makes findFragState fail instead of writing elsewhere.
//
// The pointers stay valid for the life of the gVisor stack, which keeps
// the protocol and its Fragmentation. Every access holds mu, the
// Fragmentation's own mutex, which gVisor holds wherever it reads them.
type fragState struct {
	mu                  sync.Locker
	highLimit, lowLimit *int
	timeout             *time.Duration
	memSize             *int
}

// findFragState returns the reassembly state of p, the instance of
// ipv4.NewProtocol or ipv6.NewProtocol in one gVisor stack.
func findFragState(p gvstack.NetworkProtocol) (*fragState, error) {
	v := reflect.ValueOf(p)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return nil, fmt.Errorf("network protocol is a %T, not a pointer to a struct", p)
	}
	f := v.Elem().FieldByName("fragmentation")
	if !f.IsValid() {
		return nil, fmt.Errorf("%v has no field fragmentation", v.Type())
	}
	if t := f.Type(); t.Kind() != reflect.Pointer || t.Elem().Name() != "Fragmentation" ||
		!strings.HasSuffix(t.Elem().PkgPath(), "/fragmentation") {
		return nil, fmt.Errorf("%v.fragmentation is a %v, not a *fragmentation.Fragmentation", v.Type(), t)
	}
	if f.IsNil() {
		return nil, fmt.Errorf("%v.fragmentation is nil", v.Type())
	}
	frag := f.Elem() // addressable: it is reached through a pointer.
	field := func(name string, ok func(reflect.Type) bool, want string) (unsafe.Pointer, reflect.Type, error) {
		sf, found := frag.Type().FieldByName(name)
		if !found {
			return nil, nil, fmt.Errorf("%v has no field %s", frag.Type(), name)
		}
		if !ok(sf.Type) {
			return nil, nil, fmt.Errorf("%v.%s is a %v, not %s", frag.Type(), name, sf.Type, want)
		}
		return unsafe.Pointer(frag.FieldByIndex(sf.Index).UnsafeAddr()), sf.Type, nil
	}
	is := func(want reflect.Type) func(reflect.Type) bool {
		return func(t reflect.Type) bool { return t == want }
	}
	intType, durationType := reflect.TypeFor[int](), reflect.TypeFor[time.Duration]()
	lockerType := reflect.TypeFor[sync.Locker]()
	fs := &fragState{}
	for _, ip := range []struct {
		name string
		dst  **int
	}{{"highLimit", &fs.highLimit}, {"lowLimit", &fs.lowLimit}, {"memSize", &fs.memSize}} {
		ptr, _, err := field(ip.name, is(intType), "an int")
		if err != nil {
			return nil, err
		}
		*ip.dst = (*int)(ptr)
	}
	ptr, _, err := field("timeout", is(durationType), "a time.Duration")
	if err != nil {
		return nil, err
	}
	fs.timeout = (*time.Duration)(ptr)
	ptr, muType, err := field("mu", func(t reflect.Type) bool {
		return t.Kind() == reflect.Struct && reflect.PointerTo(t).Implements(lockerType)
	}, "a mutex")
	if err != nil {
		return nil, err
	}
	fs.mu = reflect.NewAt(muType, ptr).Interface().(sync.Locker)
	return fs, nil
}
