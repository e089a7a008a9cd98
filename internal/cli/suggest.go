package cli

import (
	"flag"
	"os"
	"strings"
)

// suggest returns the candidate closest to s if it is close enough to be
// a typo (an edit distance of at most 2, and less than half of s), or "".
func suggest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := editDistance(s, c); d < bestD && 2*d < max(len(s), 2) {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, counting a
// swap of two neighbours as one edit (the commonest typo).
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev2 := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], prev2[j-2]+1)
			}
		}
		prev2, prev, cur = prev, cur, prev2
	}
	return prev[len(rb)]
}

// commandNames lists the subcommands, help included.
func commandNames() []string {
	names := []string{"help"}
	for _, c := range commands {
		names = append(names, c.name)
	}
	return names
}

// flagHint is what to add to the flag package's error for an undefined
// flag: ": did you mean --x?" for a near miss, or "".
func flagHint(fs *flag.FlagSet, err error) string {
	name, ok := strings.CutPrefix(err.Error(), "flag provided but not defined: ")
	if !ok {
		return ""
	}
	name = strings.TrimLeft(name, "-")
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	if s := suggest(name, names); s != "" {
		return ": did you mean " + dashes(s) + "?"
	}
	return ""
}

// dashes writes a flag name as the help does: -c, --config.
func dashes(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// argHint is what to add for a stray positional argument: commands that
// read a file take it with -c, which users forget.
func argHint(c *command, fs *flag.FlagSet, arg string) string {
	if fs.Lookup("c") == nil || strings.HasPrefix(arg, "-") {
		return ""
	}
	if _, err := os.Stat(arg); err != nil && !strings.HasSuffix(arg, ".hcl") {
		return ""
	}
	return ": did you mean 'ipipstack " + c.name + " -c " + arg + "'?"
}
