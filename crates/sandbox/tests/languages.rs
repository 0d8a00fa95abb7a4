//! Every language builds once and runs many inputs; compile errors are reported as such.

mod support;

use afterburner_sandbox::{Language, Limits, RunRequest, Status};
use support::sandbox;

/// A program per language that reads a name and greets it.
fn hello(language: Language) -> &'static str {
    match language {
        Language::Python => "name = input().strip()\nprint(f'hello {name}')\n",
        Language::C => {
            "#include <stdio.h>\nint main(void) { char s[64]; if (scanf(\"%63s\", s) != 1) return 1;\n\
             printf(\"hello %s\\n\", s); return 0; }\n"
        }
        Language::Cpp => {
            "#include <iostream>\n#include <string>\nint main() { std::string s; std::cin >> s;\n\
             std::cout << \"hello \" << s << \"\\n\"; }\n"
        }
        Language::Java => {
            "import java.util.Scanner;\npublic class Main { public static void main(String[] a) {\n\
             Scanner in = new Scanner(System.in); System.out.println(\"hello \" + in.next()); } }\n"
        }
        Language::JavaScript => {
            "const s = require('fs').readFileSync(0, 'utf8').trim();\nconsole.log('hello ' + s);\n"
        }
        Language::Go => {
            "package main\nimport \"fmt\"\nfunc main() { var s string; fmt.Scan(&s); fmt.Println(\"hello\", s) }\n"
        }
        Language::Rust => {
            "use std::io::Read;\nfn main() { let mut s = String::new();\n\
             std::io::stdin().read_to_string(&mut s).unwrap(); println!(\"hello {}\", s.trim()); }\n"
        }
    }
}

/// A program per language with a syntax or type error.
fn broken(language: Language) -> &'static str {
    match language {
        Language::Python => "def f(:\n    pass\n",
        Language::C => "int main(void) { return undefined_symbol; }\n",
        Language::Cpp => "int main() { std::string s = 1; }\n",
        Language::Java => {
            "public class Main { public static void main(String[] a) { int x = \"s\"; } }\n"
        }
        Language::JavaScript => "function f( {\n",
        Language::Go => "package main\nfunc main() { x := 1 }\n",
        Language::Rust => "fn main() { let x: u32 = \"s\"; }\n",
    }
}

fn hello_runs_on_two_inputs(language: Language) {
    let sb = sandbox();
    let program = sb.build(language, hello(language)).expect("build");
    assert!(
        program.is_runnable(),
        "{language}: {:?}",
        program.compilation()
    );
    if language.is_compiled() {
        assert!(
            program.compile_ms() > 0.0,
            "{language}: compile time reported"
        );
    }
    for name in ["world", "afterburner"] {
        let r = sb
            .run(
                &program,
                &RunRequest {
                    stdin: format!("{name}\n").into_bytes(),
                    ..RunRequest::default()
                },
            )
            .expect("run");
        assert_eq!(r.measurement.status, Status::Accepted, "{language}: {r:?}");
        assert_eq!(r.stdout_text(), format!("hello {name}\n"), "{language}");
        let m = &r.measurement;
        assert!(m.wall_ms > 0.0 && m.cpu_ms > 0.0, "{language}: {m:?}");
        assert!(m.peak_rss_kb > 0 && m.samples > 0, "{language}: {m:?}");
        assert!(m.integral_kb_ms > 0.0, "{language}: {m:?}");
    }
}

fn syntax_error_is_a_compile_error(language: Language) {
    let sb = sandbox();
    let program = sb.build(language, broken(language)).expect("build");
    let c = program.compilation().expect("a compile step");
    assert_eq!(c.status, Status::CompileError, "{language}: {}", c.output);
    assert!(!c.output.is_empty(), "{language}: diagnostics are reported");
    assert!(!program.is_runnable());
    let r = sb.run(&program, &RunRequest::default()).expect("run");
    assert_eq!(r.measurement.status, Status::CompileError);
}

macro_rules! language_tests {
    ($($lang:ident: $hello:ident, $broken:ident;)*) => {$(
        #[test]
        fn $hello() {
            hello_runs_on_two_inputs(Language::$lang);
        }
        #[test]
        fn $broken() {
            syntax_error_is_a_compile_error(Language::$lang);
        }
    )*};
}

language_tests! {
    Python: python_hello, python_compile_error;
    C: c_hello, c_compile_error;
    Cpp: cpp_hello, cpp_compile_error;
    Java: java_hello, java_compile_error;
    JavaScript: javascript_hello, javascript_compile_error;
    Go: go_hello, go_compile_error;
    Rust: rust_hello, rust_compile_error;
}

#[test]
fn compile_time_is_not_run_time() {
    let sb = sandbox();
    let program = sb.build(Language::Cpp, hello(Language::Cpp)).unwrap();
    let r = sb
        .run(
            &program,
            &RunRequest {
                stdin: b"x".to_vec(),
                limits: Limits::default(),
                ..RunRequest::default()
            },
        )
        .unwrap();
    // g++ takes hundreds of ms; the compiled program takes a few.
    assert!(program.compile_ms() > 50.0, "{}", program.compile_ms());
    assert!(
        r.measurement.wall_ms < program.compile_ms(),
        "{:?}",
        r.measurement
    );
}
