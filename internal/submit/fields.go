package submit

import (
	"reflect"
	"strings"
)

// FieldKind is the JSON type of a request field.
type FieldKind int

// Field kinds.
const (
	KindString FieldKind = iota + 1
	KindBool
	KindUint
	KindList
	KindObject
)

// RequestFields maps every settable request field path (Name,
// Option.FailureMode, NFOption.Config, ...) to its kind. It is derived from
// the JSON tags of RunApplicationRequest so it cannot drift from the type;
// sample sheets name columns by it and redrive edits name fields by it.
var RequestFields = func() map[string]FieldKind {
	m := map[string]FieldKind{}
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for f := range t.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			path := prefix + name
			switch ft.Kind() {
			case reflect.String:
				m[path] = KindString
			case reflect.Bool:
				m[path] = KindBool
			case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
				m[path] = KindUint
			case reflect.Slice:
				m[path] = KindList
			case reflect.Struct:
				m[path] = KindObject
				walk(path+".", ft)
			}
		}
	}
	walk("", reflect.TypeFor[RunApplicationRequest]())
	return m
}()
