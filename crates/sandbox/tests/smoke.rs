use afterburner_sandbox::*;

#[test]
fn smoke() {
    let sb = Sandbox::new().unwrap();
    println!("{:?}", sb.capabilities());
    let p = sb
        .build(
            Language::Python,
            "import sys\nprint('hello', sys.stdin.read())\n",
        )
        .unwrap();
    let r = sb
        .run(
            &p,
            &RunRequest {
                stdin: b"world".to_vec(),
                ..Default::default()
            },
        )
        .unwrap();
    println!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert_eq!(r.stdout_text(), "hello world\n");
}
