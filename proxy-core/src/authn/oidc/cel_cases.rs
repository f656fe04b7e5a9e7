//! Expressions × claims → the result kube-apiserver gives, as data. The
//! expected values come from kube's documentation (structured authentication
//! configuration) and from the cases of kube's `oidc_test.go` and
//! `authentication/cel/compile_test.go`.

use serde_json::{json, Value as Json};

use super::cel::{self, Value, Variable};

/// What kube does with an expression.
enum Want {
    /// Evaluates to this value (JSON numbers are CEL doubles).
    Is(Json),
    /// Compiles, and fails at evaluation with a message containing this.
    EvalError(&'static str),
    /// Refused at load with a message containing this.
    Refused(&'static str),
}
use Want::*;

fn turtle() -> Json {
    json!({"turtle": {"foo": {"1": "a", "2": "b", "other1": {"bit1": true, "bit2": false, "bit3": 1},
        "bar": {"3": "c", "4": "d", "other1": {"bit1": true, "bit2": false, "bit3": 1},
        "baz": {"5": "e", "6": "f", "panda": ["snorlax", "007", "santa", "claus"],
        "other1": {"bit1": true, "bit2": false, "bit3": 1}}}}}})
}

fn service_account() -> Json {
    json!({"sub": "system:serviceaccount:default:default", "jti": "ea28ed49",
        "kubernetes.io": {"namespace": "default", "node": {"name": "127.0.0.1", "uid": "ad6"},
        "pod": {"name": "hello", "uid": "a5e"}, "serviceaccount": {"name": "default", "uid": "9a2"},
        "warnafter": 1700081020}})
}

fn cases() -> Vec<(&'static str, Variable, Json, Want)> {
    use Variable::{Claims, User};
    let person = json!({"sub": "119", "username": "jane", "email": "jane@example.com",
        "email_verified": true, "hd": "example.com", "groups": ["devs", "ops"],
        "roles": "foo,bar", "other_roles": "baz,qux", "is_admin": true, "exp": 1700000000,
        "aud": ["bar", "foo", "baz"], "foo": {"username": "jane"}});
    let user = json!({"username": "jane", "uid": "007", "groups": ["claus", "system:masters"],
        "extra": {"bio.snorlax.org/3": ["true", "a", "b", "c"]}});
    vec![
        // kube docs: claim mappings
        ("claims.username", Claims, person.clone(), Is(json!("jane"))),
        (
            "'oidc:' + claims.username",
            Claims,
            person.clone(),
            Is(json!("oidc:jane")),
        ),
        (
            "claims.email_verified ? claims.email : ''",
            Claims,
            person.clone(),
            Is(json!("jane@example.com")),
        ),
        (
            "claims.groups",
            Claims,
            person.clone(),
            Is(json!(["devs", "ops"])),
        ),
        // kube types a claim as `any`: no macro ranges over one itself
        (
            "claims.groups.map(g, 'oidc:' + g)",
            Claims,
            person.clone(),
            Refused("cannot be range of a comprehension"),
        ),
        (
            "claims.roles.split(',').map(g, 'oidc:' + g)",
            Claims,
            person.clone(),
            Is(json!(["oidc:foo", "oidc:bar"])),
        ),
        ("claims.sub", Claims, person.clone(), Is(json!("119"))),
        (
            "claims.foo.username",
            Claims,
            person.clone(),
            Is(json!("jane")),
        ),
        // oidc_test.go: groups from split strings
        (
            r#"(claims.roles.split(",") + claims.other_roles.split(",")).map(role, "groups:" + role)"#,
            Claims,
            person.clone(),
            Is(json!([
                "groups:foo",
                "groups:bar",
                "groups:baz",
                "groups:qux"
            ])),
        ),
        // oidc_test.go: has() and optionals in extra
        (
            r#"(has(claims.is_admin) && claims.is_admin) ? "true":"""#,
            Claims,
            person.clone(),
            Is(json!("true")),
        ),
        (
            r#"claims.?is_admin.orValue(false) == true ? "true":"""#,
            Claims,
            person.clone(),
            Is(json!("true")),
        ),
        (
            r#"claims.?non_existent.orValue("default") == "default" ? "true":"""#,
            Claims,
            person.clone(),
            Is(json!("true")),
        ),
        (
            "has(claims.missing)",
            Claims,
            person.clone(),
            Is(json!(false)),
        ),
        // oidc_test.go: claim validation
        (
            r#"claims.hd == "example.com""#,
            Claims,
            person.clone(),
            Is(json!(true)),
        ),
        (
            r#"claims.hd == "example.com""#,
            Claims,
            json!({"sub": "x"}),
            EvalError("no such key"),
        ),
        (
            "claims.exp > 1600000000",
            Claims,
            person.clone(),
            Is(json!(true)),
        ),
        (
            r#"claims.aud.exists(a, a == "foo")"#,
            Claims,
            person.clone(),
            Refused("cannot be range of a comprehension"),
        ),
        (
            r#"claims.roles.split(",").exists(a, a == "foo")"#,
            Claims,
            person.clone(),
            Is(json!(true)),
        ),
        (
            r#"claims.roles.split(",").all(a, a.size() == 3)"#,
            Claims,
            person.clone(),
            Is(json!(true)),
        ),
        (
            r#"claims.other_roles.split(",").exists_one(a, a.startsWith("b"))"#,
            Claims,
            person.clone(),
            Is(json!(true)),
        ),
        (
            r#"claims.roles.split(",").filter(a, a.endsWith("o"))"#,
            Claims,
            person.clone(),
            Is(json!(["foo"])),
        ),
        (
            r#""foo" in claims.aud"#,
            Claims,
            person.clone(),
            Is(json!(true)),
        ),
        (
            r#"claims.email.matches("^[a-z]+@example\\.com$")"#,
            Claims,
            person.clone(),
            Is(json!(true)),
        ),
        (
            r#"claims.email.contains("@")"#,
            Claims,
            person.clone(),
            Is(json!(true)),
        ),
        (
            "claims.username.upperAscii()",
            Claims,
            person.clone(),
            Is(json!("JANE")),
        ),
        (
            "claims.email.substring(0, 4)",
            Claims,
            person.clone(),
            Is(json!("jane")),
        ),
        (
            r#"claims.email.split("@")[1]"#,
            Claims,
            person.clone(),
            Is(json!("example.com")),
        ),
        (
            r#"claims.groups.join(",")"#,
            Claims,
            person.clone(),
            Is(json!("devs,ops")),
        ),
        (
            r#"claims.email.replace("@", " at ")"#,
            Claims,
            person.clone(),
            Is(json!("jane at example.com")),
        ),
        (
            r#"claims.email.indexOf("@")"#,
            Claims,
            person.clone(),
            Is(json!(4)),
        ),
        // oidc_test.go: deeply nested claims
        (
            "claims.turtle.foo.other1.bit1 && !claims.turtle.foo.bar.other1.bit2",
            Claims,
            turtle(),
            Is(json!(true)),
        ),
        (
            "claims.turtle.foo.bar.baz.panda[0]",
            Claims,
            turtle(),
            Is(json!("snorlax")),
        ),
        (
            "claims.turtle.foo.bar.baz.panda",
            Claims,
            turtle(),
            Is(json!(["snorlax", "007", "santa", "claus"])),
        ),
        (
            "string(claims.turtle.foo.bar.other1.bit2)",
            Claims,
            turtle(),
            Is(json!("false")),
        ),
        (
            "string(claims.turtle.foo.bar.baz.other1.bit3)",
            Claims,
            turtle(),
            Is(json!("1")),
        ),
        (
            "[string(claims.turtle.foo.bar.baz.other1.bit1)] + ['a', 'b', 'c']",
            Claims,
            turtle(),
            Is(json!(["true", "a", "b", "c"])),
        ),
        (
            "claims.turtle.foo.bar.baz.?a.b.c.d.orValue([ 'claus' ])",
            Claims,
            turtle(),
            Is(json!(["claus"])),
        ),
        (
            "claims.turtle.foo.bar.baz.a.b.c.d",
            Claims,
            turtle(),
            EvalError("no such key"),
        ),
        // oidc_test.go: service-account-like claims with kube's escapes
        (
            r#"claims.sub == ("system:serviceaccount:" + claims.kubernetes__dot__io.namespace + ":" + claims.kubernetes__dot__io.serviceaccount.name)"#,
            Claims,
            service_account(),
            Is(json!(true)),
        ),
        (
            "has(claims.kubernetes__dot__io.pod.uid)",
            Claims,
            service_account(),
            Is(json!(true)),
        ),
        (
            r#"claims["kubernetes.io"]["node"]["uid"] != """#,
            Claims,
            service_account(),
            Is(json!(true)),
        ),
        (
            r#"claims[?"kubernetes.io"]["node"]["ip"].orValue(true)"#,
            Claims,
            service_account(),
            Is(json!(true)),
        ),
        (
            "claims.kubernetes__dot__io.serviceaccount.uid",
            Claims,
            service_account(),
            Is(json!("9a2")),
        ),
        (
            r#"[ "system:serviceaccounts", "system:serviceaccounts:" + claims.kubernetes__dot__io.namespace ]"#,
            Claims,
            service_account(),
            Is(json!([
                "system:serviceaccounts",
                "system:serviceaccounts:default"
            ])),
        ),
        (
            r#""JTI=" + claims.jti"#,
            Claims,
            service_account(),
            Is(json!("JTI=ea28ed49")),
        ),
        (
            "string(int(claims.kubernetes__dot__io.warnafter))",
            Claims,
            service_account(),
            Is(json!("1700081020")),
        ),
        // kube docs and oidc_test.go: user validation rules
        (
            "!user.username.startsWith('system:')",
            User,
            user.clone(),
            Is(json!(true)),
        ),
        (
            "user.groups.all(group, !group.startsWith('system:'))",
            User,
            user.clone(),
            Is(json!(false)),
        ),
        (r#"user.uid == "007""#, User, user.clone(), Is(json!(true))),
        (
            r#""claus" in user.groups"#,
            User,
            user.clone(),
            Is(json!(true)),
        ),
        (
            "user.extra.bio__dot__snorlax__dot__org__slash__3.size() == 4",
            User,
            user.clone(),
            Is(json!(true)),
        ),
        (
            r#"user.extra[?"test.x-kubernetes.io/missing"].orValue([]) == []"#,
            User,
            user.clone(),
            Is(json!(true)),
        ),
        // compile_test.go and validation: refused at load
        ("claims.", Claims, json!({}), Refused("compilation failed")),
        (
            "user.username",
            Claims,
            json!({}),
            Refused("undeclared reference to \"user\""),
        ),
        (
            "claims.sub",
            User,
            json!({}),
            Refused("undeclared reference to \"claims\""),
        ),
        (
            r#"sets.equivalent(claims.aud, ["bar", "foo", "baz"])"#,
            Claims,
            json!({}),
            Refused("\"sets.equivalent\" is not supported"),
        ),
        (
            "url(claims.iss).getHost()",
            Claims,
            json!({}),
            Refused("not supported"),
        ),
        (
            "claims.sub.format([])",
            Claims,
            json!({}),
            Refused("\"format\" is not supported"),
        ),
        ("", Claims, json!({}), Refused("is empty")),
    ]
}

fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Bool(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::UInt(u) => json!(u),
        Value::Float(f) => json!(f),
        Value::String(s) => json!(s.as_str()),
        Value::List(items) => Json::Array(items.iter().map(to_json).collect()),
        other => json!(format!("{other:?}")),
    }
}

fn same(got: &Json, want: &Json) -> bool {
    match (got, want) {
        (Json::Number(a), Json::Number(b)) => a.as_f64() == b.as_f64(),
        (Json::Array(a), Json::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        _ => got == want,
    }
}

#[test]
fn expressions_give_the_results_kube_gives() {
    let mut failures = Vec::new();
    for (source, variable, input, want) in cases() {
        let input_value = match variable {
            Variable::Claims => cel::claims_to_cel(input.as_object().expect("object")),
            Variable::User => cel::json_to_cel(&input),
        };
        let outcome = cel::compile(source, variable).map(|e| e.evaluate(&input_value));
        let ok = match (&outcome, &want) {
            (Ok(Ok(got)), Is(expected)) => same(&to_json(got), expected),
            (Ok(Err(message)), EvalError(words)) => message.contains(words),
            (Err(message), Refused(words)) => message.contains(words),
            _ => false,
        };
        if !ok {
            let wanted = match &want {
                Is(v) => format!("value {v}"),
                EvalError(w) => format!("evaluation error with {w:?}"),
                Refused(w) => format!("refused at load with {w:?}"),
            };
            let got = match &outcome {
                Ok(Ok(v)) => format!("value {}", to_json(v)),
                Ok(Err(e)) => format!("evaluation error {e:?}"),
                Err(e) => format!("refused {e:?}"),
            };
            failures.push(format!("{source}: wanted {wanted}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn kube_escapes_unescape_as_kube_reads_them() {
    for (escaped, plain) in [
        ("kubernetes__dot__io", Some("kubernetes.io")),
        (
            "bio__dot__snorlax__dot__org__slash__3",
            Some("bio.snorlax.org/3"),
        ),
        ("a__dash__b__underscores__c", Some("a-b__c")),
        ("__namespace__", Some("namespace")),
        ("plain_name", None),
        ("x__unknown__y", None),
        ("x__namespace__y", None),
    ] {
        assert_eq!(cel::unescape(escaped).as_deref(), plain, "{escaped}");
    }
}

#[test]
fn result_conversions_follow_kube() {
    let s = |v: &str| Value::String(std::sync::Arc::new(v.to_owned()));
    let list = |items: Vec<Value>| Value::List(std::sync::Arc::new(items));
    assert_eq!(
        cel::to_string_list(list(vec![s("a"), s(""), s("b")])),
        Ok(vec!["a".to_owned(), "b".to_owned()])
    );
    assert_eq!(cel::to_string_list(s("")), Ok(vec![]));
    assert_eq!(cel::to_string_list(Value::Null), Ok(vec![]));
    assert!(cel::to_string_list(list(vec![s("a"), Value::Float(1.0)])).is_err());
    assert!(cel::to_string_list(Value::Bool(true)).is_err());
    assert!(cel::to_string(Value::Float(1.0)).is_err());
    assert!(cel::to_bool(s("true")).is_err());
}

#[test]
fn a_list_straight_from_split_is_refused_as_kube_refuses_it() {
    let claims = cel::claims_to_cel(
        serde_json::json!({"roles": "a,b", "flag": true})
            .as_object()
            .expect("object"),
    );
    for (source, split) in [
        (r#"claims.roles.split(",")"#, true),
        (r#"claims.flag ? claims.roles.split(",") : ["x"]"#, true),
        (r#"claims.flag ? ["x"] : claims.roles.split(",")"#, false),
        (r#"claims.roles.split(",").map(r, r)"#, false),
        (r#"["a", "b"]"#, false),
        (r#"claims.roles"#, false),
    ] {
        let expression = cel::compile(source, Variable::Claims).unwrap();
        let result = expression.evaluate(&claims).unwrap();
        assert_eq!(
            expression.is_split_list(&result, &claims),
            split,
            "{source}"
        );
    }
}
