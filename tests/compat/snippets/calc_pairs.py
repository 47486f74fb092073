import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
output = rs.band_calc(
    input_raster_list=[
        ["$DATA/s2/S2_B11.tif", "swir"],
        ["$DATA/s2/S2_B08.tif", "nir"],
    ],
    output_path="$DATA/out/calc_pairs/ndmi.tif",
    expression_string='("nir" - "swir") / ("nir" + "swir")',
)
print(output.check)
print(output.paths)
rs.close()
