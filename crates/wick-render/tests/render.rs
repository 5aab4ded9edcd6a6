//! What a user sees in a run's pictures: non-ASCII class names drawn (not dropped), long
//! names fitted inside their tile by pixel width, chart series where the data say, the same
//! PNG bytes on every run.

use image::{Rgb, RgbImage};
use wick_render::{
    AxisScale, ImageGrid, LineChart, Series, VerticalMarker, confusion_matrix_image, encode_png,
    text_width, write_png,
};

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);

/// Pixels darker than mid-grey (text is black on white) inside `[x0, x1) × [y0, y1)`.
fn dark_pixels(image: &RgbImage, (x0, y0): (u32, u32), (x1, y1): (u32, u32)) -> usize {
    (y0..y1.min(image.height()))
        .flat_map(|y| (x0..x1.min(image.width())).map(move |x| (x, y)))
        .filter(|&(x, y)| image.get_pixel(x, y).0.iter().all(|&c| c < 128))
        .count()
}

fn grey_tile(size: u32) -> RgbImage {
    RgbImage::from_pixel(size, size, Rgb([180, 180, 180]))
}

#[test]
fn non_ascii_class_names_are_drawn_in_the_caption() {
    // 64-px tiles, 4-px margins: tile 0 spans x 4..68, its caption starts at y 4 + 64 + 2.
    for name in ["Köln café", "сова", "Ελλάδα"] {
        let mut grid = ImageGrid::new(1, 64, 1);
        grid.push(grey_tile(64), vec![name.to_string()]);
        assert_eq!(grid.caption_layout(&[name.to_string()]), vec![name.to_string()]);
        let image = grid.render();
        let caption = dark_pixels(&image, (4, 70), (68, image.height()));
        assert!(caption > 20, "{name}: {caption} dark pixels in the caption");
        assert_eq!(dark_pixels(&image, (0, 0), (image.width(), 68)), 0, "{name}: text on the tile");
    }
}

#[test]
fn a_long_name_is_wrapped_and_ellipsised_inside_its_tile() {
    let long = "Köln cathedral choir stalls and the old town hall square";
    let mut grid = ImageGrid::new(2, 64, 2);
    grid.push(grey_tile(64), vec![long.to_string()]);
    grid.push(grey_tile(64), vec!["tench".to_string()]);
    let lines = grid.caption_layout(&[long.to_string()]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        lines[0].split(' ').next(),
        Some("Köln"),
        "never cut mid-word when a word fits: {lines:?}"
    );
    assert!(lines[1].ends_with('…'), "{lines:?}");
    for line in &lines {
        assert!(text_width(line, grid.text_size()) <= 64.0, "{line}");
    }
    // Every caption pixel of tile 0 lies within its 64-px column (x 4..68); the margin
    // between the tiles (x 68..76) stays white.
    let image = grid.render();
    let below = 4 + 64 + 2;
    assert!(dark_pixels(&image, (4, below), (68, image.height())) > 40);
    assert_eq!(dark_pixels(&image, (68, below), (76, image.height())), 0);
    assert_eq!(dark_pixels(&image, (0, below), (4, image.height())), 0);
}

#[test]
fn top_loss_captions_keep_the_whole_names() {
    // fastai's plot_top_losses caption: prediction, actual, loss, probability.
    let caption = vec!["gas pump".to_string(), "golf ball".to_string(), "4.21 / 0.02".to_string()];
    let grid = ImageGrid::new(1, 128, 3);
    assert_eq!(grid.caption_layout(&caption), caption);
}

#[test]
fn series_pixels_land_where_the_data_say() {
    // A diagonal from (0, 0) to (10, 10). The x axis spans exactly 0..10 and the y axis
    // 0..10 padded by 5% each side, so the data point (5, 5) is the plot area's centre, and
    // the area's upper-left quarter holds none of the series.
    let orange = Rgb([255, 127, 14]);
    let chart = LineChart {
        title: "diagonal".into(),
        x_label: "x".into(),
        y_label: "y".into(),
        x_scale: AxisScale::Linear,
        series: vec![Series {
            name: "y = x".into(),
            points: (0..=10).map(|i| (f64::from(i), f64::from(i))).collect(),
            color: orange,
            markers: false,
        }],
        markers: vec![],
    };
    let (image, area) = chart.render_with_area(400, 300).unwrap();
    assert_eq!(area.x_range, (0.0, 10.0));
    assert!((area.y_range.0 + 0.5).abs() < 1e-12 && (area.y_range.1 - 10.5).abs() < 1e-12);
    let (cx, cy) = area.pixel(5.0, 5.0);
    assert!(
        (cx - (area.left + area.right) / 2).abs() <= 1
            && (cy - (area.top + area.bottom) / 2).abs() <= 1
    );
    let near = |x: i32, y: i32| {
        (-2..=2).any(|dy| {
            (-2..=2).any(|dx| *image.get_pixel((x + dx) as u32, (y + dy) as u32) == orange)
        })
    };
    for i in 1..10 {
        let (x, y) = area.pixel(f64::from(i), f64::from(i));
        assert!(near(x, y), "no series pixel near data ({i}, {i}) at pixel ({x}, {y})");
    }
    let (qx, qy) = area.pixel(2.5, 7.5);
    assert!(!near(qx, qy), "series pixel in the upper-left quarter");
}

#[test]
fn log_axis_marker_and_broken_series() {
    let green = Rgb([10, 200, 10]);
    let red = Rgb([200, 10, 10]);
    let chart = LineChart {
        title: "lr_find".into(),
        x_label: "learning rate".into(),
        y_label: "loss".into(),
        x_scale: AxisScale::Log10,
        series: vec![Series {
            name: "curve".into(),
            points: vec![(1e-6, 1.0), (1e-4, 0.5), (f64::NAN, 0.2), (1e-2, 2.0), (0.0, 9.0)],
            color: green,
            markers: true,
        }],
        markers: vec![VerticalMarker { x: 1e-3, label: "valley".into(), color: red }],
    };
    let (image, area) = chart.render_with_area(400, 300).unwrap();
    // Log10 axis from 1e-6 to 1e-2; x = 0 is left out, the NaN breaks the line.
    assert_eq!(area.x_range, (-6.0, -2.0));
    let count = |color: Rgb<u8>| image.pixels().filter(|p| **p == color).count();
    assert!(count(green) > 100, "series");
    assert!(count(red) > 30, "marker");
    // Between 1e-4 and 1e-2 the line is broken: the pixel halfway along that segment is not green.
    let (x, y) = area.pixel(-3.0, 1.25);
    assert_ne!(*image.get_pixel(x as u32, y as u32), green);
    // A chart with no points still renders (empty axes).
    let empty = LineChart { series: vec![], markers: vec![], ..chart };
    assert_eq!(empty.render(300, 200).unwrap().dimensions(), (300, 200));
}

#[test]
fn the_same_pictures_give_the_same_png_bytes() {
    let chart = LineChart {
        title: "loss".into(),
        x_label: "batches".into(),
        y_label: "loss".into(),
        x_scale: AxisScale::Linear,
        series: vec![Series {
            name: "train".into(),
            points: (0..50).map(|i| (f64::from(i), 1.0 / f64::from(i + 1))).collect(),
            color: Rgb([31, 119, 180]),
            markers: false,
        }],
        markers: vec![],
    };
    let first = encode_png(&chart.render(320, 200).unwrap()).unwrap();
    let second = encode_png(&chart.render(320, 200).unwrap()).unwrap();
    assert_eq!(first, second);
    let names = vec!["сова".to_string(), "Köln café".to_string()];
    let counts = vec![vec![3, 1], vec![0, 4]];
    assert_eq!(
        encode_png(&confusion_matrix_image(&counts, &names)).unwrap(),
        encode_png(&confusion_matrix_image(&counts, &names)).unwrap()
    );
    let grid = || {
        let mut grid = ImageGrid::new(2, 48, 2).with_title("Prediction/Actual/Loss/Probability");
        grid.push(grey_tile(48), vec!["сова".to_string(), "Köln café".to_string()]);
        grid.push(grey_tile(32), vec!["Ελλάδα".to_string(), "漢".to_string()]);
        encode_png(&grid.render()).unwrap()
    };
    assert_eq!(grid(), grid());
    // And the file written is those bytes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loss.png");
    write_png(&path, &chart.render(320, 200).unwrap()).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), first);
}

#[test]
fn confusion_matrix_cells_are_shaded_by_row_share_and_named() {
    let names = vec![
        "tench".to_string(),
        "Ελλάδα".to_string(),
        "a very long class name indeed, longer than any label".to_string(),
    ];
    let counts = vec![vec![5, 0, 0], vec![1, 4, 0], vec![0, 0, 2]];
    let image = confusion_matrix_image(&counts, &names);
    // The diagonal cells are dark blue (share 1 or 0.8), the empty cells white: count both.
    let darkest = image.pixels().filter(|p| **p == Rgb([8, 48, 107])).count();
    assert!(darkest > 2 * 40 * 40, "{darkest} fully dark pixels (two full rows)");
    // The long name was ellipsised: the picture stays narrower than the name would make it.
    assert!(image.width() < 3 * 44 + 200 + 60, "width {}", image.width());
    assert!(image.pixels().any(|p| *p != WHITE));
}
