//! Where the `cel` crate and kube-apiserver's CEL differ, kube's meaning
//! compiled in: each such form is rewritten at load into a call of a
//! function of this module (its name starts with `@`, so no expression can
//! spell it).
//!
//! - Optional field selection (`claims.?org.team`). kube's claims are JSON,
//!   so a claim may hold anything. In an optional chain, kube's CEL gives
//!   `optional.none()` for a field of a value that is no map at all (null, a
//!   number, a bool, a string) and for a field a map lacks, and refuses a
//!   field of a list. The `cel` crate errs on the first and gives none on
//!   the second, so every field selection of an optional chain (`x.?f`, and
//!   `.f` after one) becomes [`OPTIONAL_SELECT`].
//! - `string()` of a double. kube's CEL formats it as Go's `%g` does
//!   (`2e+21`, `1e-05`, `2.5`); the `cel` crate writes every digit.
//!   `string(x)` becomes [`STRING`]`(string(x), x)`, which formats doubles
//!   as Go does and passes anything else on.

use cel::common::ast::{CallExpr, Expr, IdedExpr, LiteralValue, SelectExpr};
use cel::common::types::{CelDouble, CelOptional, CelString, Kind, DYN_TYPE, STRING_TYPE};
use cel::common::value::CowVal;
use cel::{Env, ExecutionError};

/// The function optional field selections are compiled into.
pub(super) const OPTIONAL_SELECT: &str = "@kube_optional_select";

/// The function `string()` conversions are compiled into.
pub(super) const STRING: &str = "@kube_string";

/// Adds this module's functions to `env`.
pub(super) fn register(env: &mut Env) -> Result<(), String> {
    env.add_overload(
        OPTIONAL_SELECT,
        "kube_optional_select",
        vec![DYN_TYPE, STRING_TYPE],
        optional_select,
    )
    .map_err(|e| format!("{e:?}"))?;
    env.add_overload(STRING, "kube_string", vec![DYN_TYPE, DYN_TYPE], string)
        .map_err(|e| format!("{e:?}"))
}

/// `string(x)`, given as `(string(x), x)`: a double formatted as Go's `%g`
/// formats it, anything else as the `cel` crate converted it.
fn string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [converted, value] = <[CowVal<'b, 'v>; 2]>::try_from(args)
        .map_err(|_| ExecutionError::function_error("string", "takes one value"))?;
    match value.downcast_ref::<CelDouble>() {
        Some(double) => Ok(CowVal::owned(CelString::from(go_format_g(*double.inner())))),
        None => Ok(converted),
    }
}

/// `f` as Go's `strconv.FormatFloat(f, 'g', -1, 64)` writes it: the
/// shortest digits that read back as `f`, in exponent form when the
/// exponent is below -4 or at least 6 (the exponent signed, at least two
/// digits), plain otherwise.
fn go_format_g(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if f == 0.0 {
        return format!("{sign}0");
    }
    // Rust's `{:e}` writes the shortest digits that round-trip, as Go does.
    let scientific = format!("{:e}", f.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if !(-4..6).contains(&exponent) {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        return format!("{sign}{first}{dot}{rest}e{exp_sign}{:02}", exponent.abs());
    }
    let point = exponent + 1;
    let body = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}", "0".repeat(point as usize - digits.len()))
    } else {
        let (whole, fraction) = digits.split_at(point as usize);
        format!("{whole}.{fraction}")
    };
    format!("{sign}{body}")
}

/// `target.?field`, where `target` may itself be an optional.
fn optional_select<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [target, field] = <[CowVal<'b, 'v>; 2]>::try_from(args)
        .map_err(|_| ExecutionError::function_error("_?._", "takes a value and a field"))?;
    let none = || Ok(CowVal::owned(CelOptional::none()));
    let value = match target.downcast_ref::<CelOptional>() {
        Some(optional) => match optional.option() {
            Some(value) => value,
            None => return none(),
        },
        None => &*target,
    };
    match value.get_type().kind() {
        Kind::Map => match value.as_indexer().map(|map| map.get(&*field)) {
            Some(Ok(found)) => Ok(CowVal::owned(CelOptional::of(found.into_owned()))),
            _ => none(),
        },
        Kind::List => Err(ExecutionError::function_error(
            "_?._",
            "a list has no fields",
        )),
        _ => none(),
    }
}

/// Whether `expr` (checked and rewritten) is a claim itself: `claims.x`,
/// `claims["x"]`, or `claims.?x` / `claims[?"x"]` unwrapped by `orValue()`
/// or `value()`. kube types `claims` as a map of `any`, so a claim's static
/// type is `any`, which kube's checker refuses as the range of a macro
/// (`all`, `exists`, `map`, ...); a field of a claim is `dyn`, which it
/// accepts.
pub(super) fn is_a_claim(expr: &IdedExpr) -> bool {
    let of_claims = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(name) if name == "claims");
    match &expr.expr {
        Expr::Select(select) => !select.test && of_claims(&select.operand),
        Expr::Call(call) if call.func_name == "_[_]" => call.args.first().is_some_and(of_claims),
        Expr::Call(call) if call.func_name == "orValue" || call.func_name == "value" => {
            call.target.as_deref().is_some_and(|target| {
                matches!(&target.expr, Expr::Call(inner)
                    if (inner.func_name == OPTIONAL_SELECT || inner.func_name == "_[?_]")
                        && inner.args.first().is_some_and(of_claims))
            })
        }
        _ => false,
    }
}

/// Whether `expr` yields an optional of a field selection chain.
fn is_optional_chain(expr: &IdedExpr) -> bool {
    matches!(&expr.expr, Expr::Call(call) if call.func_name == OPTIONAL_SELECT || call.func_name == "_[?_]")
}

/// Rewrites one node after its children were checked: `_?._(x, "f")`, and
/// `x.f` where `x` is an optional chain, become [`OPTIONAL_SELECT`] calls,
/// and `string(x)` a [`STRING`] call.
pub(super) fn rewrite(expr: &mut IdedExpr) {
    match &mut expr.expr {
        Expr::Call(call) if call.func_name == "_?._" => {
            call.func_name = OPTIONAL_SELECT.to_owned();
        }
        Expr::Call(call)
            if call.func_name == "string" && call.target.is_none() && call.args.len() == 1 =>
        {
            let value = call.args[0].clone();
            let converted = IdedExpr {
                id: expr.id,
                expr: Expr::Call(std::mem::take(call)),
            };
            expr.expr = Expr::Call(CallExpr {
                func_name: STRING.to_owned(),
                target: None,
                args: vec![converted, value],
            });
        }
        Expr::Select(select) if !select.test && is_optional_chain(&select.operand) => {
            let SelectExpr { operand, field, .. } = std::mem::take(select);
            expr.expr = Expr::Call(CallExpr {
                func_name: OPTIONAL_SELECT.to_owned(),
                target: None,
                args: vec![
                    *operand,
                    IdedExpr {
                        id: expr.id,
                        expr: Expr::Literal(LiteralValue::String(CelString::from(field))),
                    },
                ],
            });
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::cel::{claims_to_cel, compile, Value, Variable};
    use serde_json::json;

    fn eval(source: &str, claims: serde_json::Value) -> Result<Value, String> {
        let claims = claims_to_cel(claims.as_object().unwrap());
        compile(source, Variable::Claims).unwrap().evaluate(&claims)
    }

    #[test]
    fn fields_of_non_maps_are_none_and_fields_of_lists_refused_as_in_kube() {
        let team = r#"claims.?org.team.orValue("none")"#;
        for org in [json!(5), json!(null), json!("x"), json!(true), json!({})] {
            let got = eval(team, json!({ "org": org.clone() }));
            assert_eq!(got, Ok(Value::from("none")), "org {org}");
        }
        assert_eq!(eval(team, json!({})), Ok(Value::from("none")));
        let got = eval(team, json!({"org": {"team": "a"}}));
        assert_eq!(got, Ok(Value::from("a")));
        assert!(eval(team, json!({"org": ["a"]})).is_err());
        let optional = r#"claims.?org.?team.orValue("none")"#;
        assert_eq!(eval(optional, json!({"org": 5})), Ok(Value::from("none")));
        assert!(eval(optional, json!({"org": [1]})).is_err());
        let deep = r#"claims.?a.b.c.orValue("none")"#;
        let got = eval(deep, json!({"a": {"b": {"c": "x"}}}));
        assert_eq!(got, Ok(Value::from("x")));
        assert_eq!(eval(deep, json!({"a": {"b": 1}})), Ok(Value::from("none")));
    }

    #[test]
    fn doubles_become_strings_as_go_formats_them() {
        for (f, go) in [
            (2e21, "2e+21"),
            (1e21, "1e+21"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (999999.0, "999999"),
            (2.5, "2.5"),
            (3.0, "3"),
            (-1.0, "-1"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-0.0, "-0"),
            (0.0, "0"),
            (1e100, "1e+100"),
            (f64::INFINITY, "+Inf"),
        ] {
            assert_eq!(super::go_format_g(f), go, "{f}");
        }
        let got = eval(
            "string(claims.n) + string(1) + string(true)",
            json!({"n": 1e21}),
        );
        assert_eq!(got, Ok(Value::from("1e+211true")));
        assert!(eval("string([1])", json!({})).is_err());
    }

    #[test]
    fn a_macro_over_a_claim_itself_is_refused_as_kube_refuses_it() {
        for source in [
            "claims.groups.map(g, g)",
            r#"claims["groups"].exists(g, g == "a")"#,
            "claims.?groups.orValue([]).all(g, g != \"\")",
            "claims.?groups.value().filter(g, true)",
        ] {
            let refused = compile(source, Variable::Claims).unwrap_err();
            assert!(refused.contains("cannot be range"), "{source}: {refused}");
        }
        for source in [
            "claims.?org.teams.orValue([]).map(t, t.name)",
            "claims.org.teams.map(t, t.name)",
            r#"claims.roles.split(",").map(r, r)"#,
            "user.groups.all(g, g != \"\")",
        ] {
            let variable = if source.starts_with("user") {
                Variable::User
            } else {
                Variable::Claims
            };
            assert!(compile(source, variable).is_ok(), "{source}");
        }
    }
}
